"""python -m tests.boards serve BOARD [--port N] [--memory-limit BYTES] | run BOARD CMD... | list"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from tests.boards.overlay import BOARDS_DIR, board_path, namespace_argv
from tests.boards.sshd import SshBoard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.boards", description="emulated edge boards")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a board's sshd until Ctrl-C")
    serve.add_argument("board", help="board name or folder, e.g. rpi4-4gb or tests/boards/rpi4-4gb")
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--memory-limit", type=int, default=None, metavar="BYTES")
    run = sub.add_parser("run", help="run a command on a board (no sshd)")
    run.add_argument("board")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("list", help="list the boards")
    args = parser.parse_args(argv)

    if args.command == "list":
        for d in sorted(BOARDS_DIR.iterdir()):
            if (d / "board.yaml").is_file():
                print(d.name)
        return 0
    if args.command == "run":
        cmd = args.cmd or [os.environ.get("SHELL", "/bin/sh")]
        argv = namespace_argv(board_path(args.board), cmd)
        os.execvp(argv[0], argv)
    # Ctrl-C even when started with SIGINT ignored (a background job); SIGTERM stops cleanly too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with SshBoard(args.board, port=args.port, memory_limit_bytes=args.memory_limit) as board:
        print(f"board {board.name} up: {board.target}")
        print(f"  ssh -i {board.key_path} -p {board.port} -o UserKnownHostsFile={board.known_hosts_path} {board.user}@{board.host}")
        print(f"  ssh -F {board.ssh_config_path} {board.name}")
        print(f"  host key {board.host_key_fingerprint}")
        if args.memory_limit is not None:
            print(f"  memory limit {'applied: ' + str(board.memory_cgroup) if board.memory_limit_applied else 'NOT applied'}")
        print("Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
