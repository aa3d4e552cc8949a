"""Runs first in a replay board's new namespaces (PID 1), before the board overlay (_nsinit.py).

Usage: python -I -S _init.py GO_FD STATE_DIR PASSWD -- ARGV...   (built by replay/board.py)

Waits until the host has wired the board's network (a byte on GO_FD), then gives the board a
private tmpfs at STATE_DIR (its deploy root lives there: every board has the same paths, as
real boards of one image do, and what one writes no other sees) and binds PASSWD over
/etc/passwd (the login shell that answers from the recording), then execs ARGV, keeping PID 1.
Stdlib only.
"""

from __future__ import annotations

import ctypes
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: _init.py GO_FD STATE_DIR PASSWD -- ARGV...", file=sys.stderr)
        return 2
    go_fd, state_dir, passwd, command = int(argv[0]), argv[1], argv[2], argv[4:]
    go = os.read(go_fd, 1)
    os.close(go_fd)
    if go != b"1":  # the host gave up wiring the link (it closed the pipe)
        return 125
    try:
        mount("replay-board", state_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        mount(passwd, "/etc/passwd", None, MS_BIND)
        mount("none", "/etc/passwd", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.execv(command[0], command)
    except OSError as exc:
        print(f"replay board init: {exc}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
