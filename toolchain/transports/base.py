"""The Transport protocol: run commands, move files, say what the link can do.

The base class owns run semantics (quoting, timeouts, the result object, errors carrying the
last lines of output). Each transport implements only the byte-level primitives `_exec`,
`_put` and `_get`, so quoting and error handling are written once.
"""

from __future__ import annotations

import shlex
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import CommandFailed, CommandTimeout, TargetError
from toolchain.transports.process import OutputTooLarge

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)

TAIL_LINES = 12
# What one command may print (stdout and stderr together) before it is killed and refused: far
# above any probe or log tail, far below what would hurt the host.
MAX_OUTPUT_BYTES = 16 << 20


@dataclass(frozen=True)
class Capabilities:
    file_transfer: bool = True
    max_file_bytes: int | None = None  # None: no limit
    separate_stderr: bool = True
    resumable_put: bool = True
    # One command at a time (a serial console is one stream): a second thread's command waits,
    # and a background one (the lock heartbeat) is skipped while another runs (try_run).
    concurrent_commands: bool = True
    # A command run with hold_stdin=True reads EOF on its stdin once this host process is gone,
    # killed included (the local pipe, the SSH channel close with it): the runner watches for it.
    stdin_ends_with_host: bool = False


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = (self.stdout + ("\n" + self.stderr if self.stderr else "")).strip()
        return "\n".join(text.splitlines()[-lines:])


def shell_join(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Quote every argument for a POSIX shell: no value reaches a remote shell unquoted."""
    prefix = ""
    if env:
        prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " "
    return prefix + shlex.join(list(argv))


class Transport(ABC):
    """A connection to one target. Use as a context manager or call close()."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, display: str) -> None:
        self.display = display
        self._one_at_a_time = threading.RLock()  # reentrant: a transport's own steps nest

    # --- public API used by every stage ---

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        hold_stdin: bool = False,
    ) -> CommandResult:
        """Run argv on the target (quoted), with a timeout; raise CommandFailed when check.

        hold_stdin: keep the command's stdin open (and empty) until it ends, where the transport
        can (Capabilities.stdin_ends_with_host), so that it sees EOF when this process dies.
        Whatever the transport, a command interrupted on this side (a signal) is killed on the target."""
        return self.run_shell(shell_join(argv, env), timeout=timeout, stdin=stdin, check=check, hold_stdin=hold_stdin)

    def run_shell(
        self, command: str, *, timeout: float = 60.0, stdin: bytes | None = None, check: bool = True, hold_stdin: bool = False
    ) -> CommandResult:
        """Run a shell command line that the caller built from quoted parts."""
        if self.capabilities.concurrent_commands:
            return self._run_shell(command, timeout, stdin, check, hold_stdin)
        with self._one_at_a_time:
            return self._run_shell(command, timeout, stdin, check, hold_stdin)

    def try_run(self, argv: Sequence[str], *, timeout: float = 60.0) -> CommandResult | None:
        """Run argv now, unchecked; None when the link carries one command at a time and is busy
        (for background upkeep that may skip a beat, never for the work itself)."""
        if self.capabilities.concurrent_commands:
            return self.run(argv, timeout=timeout, check=False)
        if not self._one_at_a_time.acquire(blocking=False):
            return None
        try:
            return self._run_shell(shell_join(argv), timeout, None, False, False)
        finally:
            self._one_at_a_time.release()

    def _run_shell(self, command: str, timeout: float, stdin: bytes | None, check: bool, hold_stdin: bool) -> CommandResult:
        start = time.monotonic()
        try:
            status, out, err = self._exec(command, timeout, stdin, hold_stdin and stdin is None)
        except OutputTooLarge as exc:
            raise TargetError(f"{self.display}: a command printed more than {MAX_OUTPUT_BYTES >> 20} MiB and was stopped: {_short(command)}",
                              "the target answered with far more than it should: look at what that command prints there") from exc
        except TimeoutError as exc:
            raise CommandTimeout(
                f"{self.display}: command timed out after {timeout:g} s: {_short(command)}",
                "the target may be overloaded or hung; retry, or raise the timeout",
            ) from exc
        result = CommandResult(
            command=command,
            exit_status=status,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_s=time.monotonic() - start,
        )
        if check and not result.ok:
            tail = result.tail()
            raise CommandFailed(
                f"{self.display}: command failed (exit {status}): {_short(command)}"
                + (f": {tail.splitlines()[-1]}" if tail else ""),
                "the last lines of its output are in the report; run with --debug for all of it",
                exit_status=status,
                output_tail=tail,
            )
        return result

    def run_script(self, script: str, *, timeout: float = 60.0, check: bool = True) -> CommandResult:
        """Run a POSIX sh script in one round trip (fed on stdin; transports may override)."""
        return self.run_shell("sh -s", timeout=timeout, stdin=script.encode(), check=check)

    def put(self, local: Path, remote: str, *, offset: int = 0, progress: ProgressFn | None = None) -> None:
        """Copy local into remote; with offset > 0, append local[offset:] to an existing remote."""
        self._put(local, remote, offset, progress)

    def get(self, remote: str, local: Path, *, progress: ProgressFn | None = None, max_bytes: int | None = None) -> None:
        """Copy remote into local; with max_bytes, a larger remote file is refused before it is copied."""
        if max_bytes is not None:
            out = self.run_shell(f"wc -c < {shlex.quote(remote)}", timeout=30, check=False).stdout.split()
            if out and out[-1].isdigit() and int(out[-1]) > max_bytes:
                raise TargetError(f"{self.display}: {remote} is {int(out[-1])} bytes, more than the {max_bytes} expected of it",
                                  "the program on the board wrote far more than it should: look at the file there")
        self._get(remote, local, progress)
        if max_bytes is not None and local.stat().st_size > max_bytes:  # it grew while being copied
            local.unlink()
            raise TargetError(f"{self.display}: {remote} grew past {max_bytes} bytes while it was copied",
                              "the program on the board wrote far more than it should: look at the file there")

    def home(self) -> str:
        """The login user's home directory on the target, as an absolute path."""
        return self.run_shell('printf %s "$HOME"', timeout=30).stdout.strip() or "/"

    def close(self) -> None:  # noqa: B027 - optional hook: most transports hold nothing to release
        """Release the connection; idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- primitives each transport implements ---

    @abstractmethod
    def _exec(self, command: str, timeout: float, stdin: bytes | None, hold_stdin: bool = False) -> tuple[int, bytes, bytes]:
        """Run a shell command line; return (exit status, stdout, stderr); raise TimeoutError.
        Interrupted here (a BaseException from a signal handler), kill the command, then re-raise."""

    @abstractmethod
    def _put(self, local: Path, remote: str, offset: int, progress: ProgressFn | None) -> None: ...

    @abstractmethod
    def _get(self, remote: str, local: Path, progress: ProgressFn | None) -> None: ...


def _short(command: str, limit: int = 120) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[: limit - 3] + "..."
