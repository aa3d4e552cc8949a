"""A child process read to completion with its output bounded: a board (or adb) that prints
without end must not fill the host's memory. Used by the local and adb transports; the SSH
channel and the serial console count what they read themselves (base.MAX_OUTPUT_BYTES)."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import time

from toolchain.core.errors import TargetError

READ = 1 << 16


class OutputTooLarge(TargetError):
    """The child printed more than the limit (the caller kills it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a command printed more than {limit >> 20} MiB and was stopped",
                         "the target answered with far more than it should: look at what the command prints there")


def dies_with_us(argv: list[str]) -> list[str]:
    """argv run so that the child is SIGKILLed when this process dies, SIGKILL included (Linux:
    setpriv's parent-death signal). A client child (ssh, adb) runs in its own session to keep it off
    a terminal's Ctrl-C; an orphaned one would keep its remote command (or a copy) going."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def communicate_bounded(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float, limit: int, *,
                        hold_stdin: bool = False) -> tuple[bytes, bytes]:
    """(stdout, stderr) of proc. TimeoutError past the timeout, OutputTooLarge past `limit` bytes
    of stdout and stderr together; in both cases the caller kills proc. hold_stdin: leave an empty
    proc.stdin open (the caller closes it), so proc reads EOF only when we close it or die."""
    out, err = bytearray(), bytearray()
    bufs = {proc.stdout: out, proc.stderr: err}
    deadline = time.monotonic() + timeout
    pending = memoryview(stdin or b"")
    with selectors.DefaultSelector() as sel:
        for pipe in bufs:
            if pipe is not None:
                sel.register(pipe, selectors.EVENT_READ)
        if proc.stdin is not None:
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            elif not hold_stdin:
                proc.stdin.close()
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for key, _ in sel.select(min(left, 1.0)):
                f = key.fileobj
                if f is proc.stdin and proc.stdin is not None:
                    try:
                        pending = pending[os.write(proc.stdin.fileno(), pending[:READ]):]
                    except BrokenPipeError:
                        pending = memoryview(b"")
                    if not pending:
                        sel.unregister(f)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, READ)
                if not chunk:
                    sel.unregister(f)
                    continue
                bufs[f] += chunk  # type: ignore[index]
                if len(out) + len(err) > limit:
                    raise OutputTooLarge(limit)
    proc.wait(max(0.001, deadline - time.monotonic()))
    return bytes(out), bytes(err)
