"""Bulk upload speed of SshTransport.put against OpenSSH's scp, both over loopback.

    .venv/bin/python bench/ssh_copy.py [--size-mb 300] [--rounds 3] [--via auto|ssh|channel]

Starts a real sshd (the test rig, tests/boards/sshd.py), writes a random file, then copies it with
scp and with SshTransport.put, alternating (and swapping who goes first each round, so drift in
machine load hits both), and prints MB/s for each plus the ratio transport/scp of the medians.
Goal: ratio >= 0.9. --via channel measures the paramiko fallback instead of the system ssh path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.boards.sshd import SshBoard  # noqa: E402
from toolchain.core.nouns import TargetSpec  # noqa: E402
from toolchain.transports.ssh import SshTransport  # noqa: E402

MB = 1_000_000


def write_random(path: Path, size: int) -> None:
    block = os.urandom(4 << 20)  # repeated block: cheap to make, incompressible enough for ssh
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--via", choices=["auto", "ssh", "channel"], default="auto")
    ap.add_argument("--board", default="rpi4-4gb", help="emulated board the sshd runs (any works)")
    args = ap.parse_args()
    size = args.size_mb * MB

    with SshBoard(args.board) as board, tempfile.TemporaryDirectory(prefix="edgedeploy-bench-") as tmp:
        src = Path(tmp) / "payload.bin"
        write_random(src, size)
        dst_scp, dst_put = Path(tmp) / "via-scp.bin", Path(tmp) / "via-put.bin"
        scp_argv = ["scp", "-q", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"UserKnownHostsFile={board.known_hosts_path}", "-i", str(board.key_path),
                    "-P", str(board.port), str(src), f"{board.user}@{board.host}:{dst_scp}"]
        transport = SshTransport(TargetSpec(name=board.name, kind="ssh"), ssh_config_path=str(board.ssh_config_path))
        transport.copy_via = args.via
        transport.connect()  # both sides pay their own per-copy ssh handshake, not this one

        def scp() -> None:
            subprocess.run(scp_argv, check=True, stdin=subprocess.DEVNULL)

        def put() -> None:
            transport.put(src, str(dst_put))

        speeds: dict[str, list[float]] = {"scp": [], "put": []}
        for rnd in range(args.rounds):
            order = [("scp", scp, dst_scp), ("put", put, dst_put)]
            if rnd % 2:
                order.reverse()
            for name, fn, dst in order:
                seconds = timed(fn)
                if dst.stat().st_size != size:
                    raise SystemExit(f"{name}: copied {dst.stat().st_size} bytes, expected {size}")
                dst.unlink()
                speeds[name].append(size / MB / seconds)
                print(f"round {rnd + 1}  {name:<4} {size / MB / seconds:8.1f} MB/s  ({seconds:.2f} s)", flush=True)
        transport.close()

    med_scp, med_put = statistics.median(speeds["scp"]), statistics.median(speeds["put"])
    path = "system ssh" if args.via != "channel" else "paramiko channel"
    print(f"\n{args.size_mb} MB over loopback, {args.rounds} rounds, SshTransport.put via {path}")
    print(f"scp                : median {med_scp:7.1f} MB/s  ({', '.join(f'{s:.1f}' for s in speeds['scp'])})")
    print(f"SshTransport.put   : median {med_put:7.1f} MB/s  ({', '.join(f'{s:.1f}' for s in speeds['put'])})")
    print(f"ratio put/scp      : {med_put / med_scp:.2f}  (goal >= 0.90)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
