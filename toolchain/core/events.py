"""Where the pipeline's progress goes: an event sink passed in by the caller (after ansible-runner's
event_handler). The engine never prints; the CLI renders events as rich steps, spinners and
progress bars on stderr, the lab writes each board's events to its own log and its live view.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Protocol

from toolchain.transports.base import ProgressFn


class Events(Protocol):
    """What a stage reports while it works. Every method must be cheap and must not raise,
    except stage(), where a caller may stop an abandoned run (the lab's stage timeouts)."""

    def stage(self, name: str) -> None:
        """A pipeline stage starts (connect, probe, provision, plan, dry_load, package, transfer, run, validate, serve)."""

    def step(self, message: str) -> None:
        """A headline: what is being done now."""

    def log(self, message: str) -> None:
        """A detail line under the current step."""

    def busy(self, description: str) -> AbstractContextManager[None]:
        """Work without a measurable amount (a spinner on a terminal)."""

    def transfer(self, description: str, total: int) -> AbstractContextManager[ProgressFn]:
        """Work with a byte count: yields a progress callback (done, total)."""


class NullEvents:
    """Discards everything (library callers that want no output, tests)."""

    def stage(self, name: str) -> None:
        pass

    def step(self, message: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def busy(self, description: str) -> Iterator[None]:
        yield

    @contextmanager
    def transfer(self, description: str, total: int) -> Iterator[ProgressFn]:
        yield lambda done, total_: None


class LineEvents:
    """Plain text lines to a file (a CI log, a board's pipeline.log): a transfer prints one line
    per quarter, a busy section one line. on_stage lets a caller observe (and veto) stages."""

    def __init__(self, out: IO[str], on_stage: Callable[[str], None] | None = None) -> None:
        self.out = out
        self.on_stage = on_stage
        self._lock = threading.Lock()  # one board's transfer callback may run on a copy thread

    def _write(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def stage(self, name: str) -> None:
        if self.on_stage is not None:
            self.on_stage(name)

    def step(self, message: str) -> None:
        self._write(f"› {message}")

    def log(self, message: str) -> None:
        self._write(message)

    @contextmanager
    def busy(self, description: str) -> Iterator[None]:
        self._write(f"  {description}…")
        yield

    @contextmanager
    def transfer(self, description: str, total: int) -> Iterator[ProgressFn]:
        yield quarter_lines(description, self.log)


def quarter_lines(description: str, log: Callable[[str], None]) -> ProgressFn:
    """A progress callback that logs at 25 %, 50 %, 75 % and 100 % (readable in a CI log)."""
    last = [0]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct >= last[0] + 25 or done == total:
            last[0] = pct
            log(f"  {description}: {pct}% of {total / 1e6:.1f} MB")

    return progress
