"""PID 1 of a replay board, after the overlay (_nsinit.py execs it, keeping PID 1): starts the
board's sshd and outlives it, as a board's init does, so that sshd can die and come back (a
flaky board) or every process can go (a reboot) while the board itself, its namespaces and its
disk (the deploy root's tmpfs), stays. The board's PID 1 dying would take all of that with it.

Usage: python -I -S _pid1.py -- ARGV...   (built by replay/board.py; ARGV is sshd -D ...)

  SIGUSR1  start ARGV again if it is not running (sshd is back)
  SIGUSR2  kill every other process of the board: kill(-1) from a PID namespace's init reaches
           all of them but itself (a reboot; the host brings sshd back with SIGUSR1)
  SIGTERM  exit: the namespace, and everything in it, goes
It reaps every orphan (PID 1's job), so a killed session leaves no zombie. The host can send
these signals: a namespace's init gets, from outside, the signals it has handlers for.
Stdlib only.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        print("usage: _pid1.py -- ARGV...", file=sys.stderr)
        return 2
    command = argv[1:]
    child: list[int | None] = [None]

    def spawn() -> None:
        if child[0] is None:
            pid = os.fork()
            if pid == 0:
                for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
                    signal.signal(s, signal.SIG_DFL)
                try:
                    os.execv(command[0], command)
                finally:
                    os._exit(127)
            child[0] = pid

    def reboot(_s: int, _f: object) -> None:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing else was running
        child[0] = None

    signal.signal(signal.SIGUSR1, lambda _s, _f: spawn())
    signal.signal(signal.SIGUSR2, reboot)
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(0))
    spawn()
    while True:
        try:
            pid, _ = os.waitpid(-1, 0)  # retried after a handler ran (PEP 475)
        except ChildProcessError:  # nothing left to reap: wait for a signal (a short sleep, never a lost wake-up)
            time.sleep(0.2)
            continue
        if pid == child[0]:
            child[0] = None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
