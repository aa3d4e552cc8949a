"""The machine edgedeploy runs on, reached through the same protocol as a remote board."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from toolchain.transports.base import MAX_OUTPUT_BYTES, Capabilities, ProgressFn, Transport
from toolchain.transports.process import communicate_bounded

CHUNK = 4 << 20


class LocalTransport(Transport):
    capabilities = Capabilities(file_transfer=True, max_file_bytes=None, separate_stderr=True, resumable_put=True,
                                stdin_ends_with_host=True)

    def __init__(self) -> None:
        super().__init__("local")

    def _exec(self, command: str, timeout: float, stdin: bytes | None, hold_stdin: bool = False) -> tuple[int, bytes, bytes]:
        # Own process group so a timeout kills the whole pipeline, not just sh; and so a terminal's
        # Ctrl-C reaches us, not the command: we decide what it stops (below).
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE if stdin is not None or hold_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = communicate_bounded(proc, stdin, timeout, MAX_OUTPUT_BYTES, hold_stdin=hold_stdin)
        except BaseException as exc:  # a timeout, too much output, or a signal on this side: nothing is left running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
                raise TimeoutError(command) from exc
            raise
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return proc.returncode, out, err

    def _put(self, local: Path, remote: str, offset: int, progress: ProgressFn | None) -> None:
        _copy(local, Path(remote), offset, progress)

    def _get(self, remote: str, local: Path, progress: ProgressFn | None) -> None:
        _copy(Path(remote), local, 0, progress)

    def home(self) -> str:
        return str(Path.home())


def _copy(src: Path, dst: Path, offset: int, progress: ProgressFn | None) -> None:
    total = src.stat().st_size
    with src.open("rb") as fin, dst.open("r+b" if offset else "wb") as fout:
        fin.seek(offset)
        fout.seek(offset)
        fout.truncate()
        done = offset
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    if progress and total == 0:
        progress(0, 0)
