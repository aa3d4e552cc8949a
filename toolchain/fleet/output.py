"""Route the pipeline's human output (ui.*) of each board thread into that board's log file.

pipeline.ship talks to the user through toolchain.cli.console: steps, spinners and progress bars on
stderr. Thirty-two boards doing that at once would interleave unreadably and, on a terminal,
start thirty-two rich live displays, which rich refuses. While a lab runs, ui.err is a console
that writes to the calling thread's log (or to the real stderr for unregistered threads), and
spinners and bars take their plain, non-interactive form. Swapping module attributes keeps the
pipeline's modules untouched; install/uninstall nest, so concurrent lab runs in one process work.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from toolchain.cli import console as ui
from toolchain.transports.base import ProgressFn


class _ThreadRouter:
    """A file object: each thread's writes go to its registered sink, others to the real stderr."""

    def __init__(self, fallback: Console) -> None:
        self.fallback = fallback
        self.sinks: dict[int, IO[str]] = {}

    def write(self, text: str) -> int:
        sink = self.sinks.get(threading.get_ident())
        if sink is None:
            self.fallback.file.write(text)
        else:
            sink.write(text)
            sink.flush()
        return len(text)

    def flush(self) -> None:
        self.fallback.file.flush()

    def isatty(self) -> bool:
        return False


_lock = threading.Lock()
_depth = 0
_saved: dict[str, Any] = {}
_router: _ThreadRouter | None = None


@contextmanager
def _plain_spinner(description: str) -> Iterator[None]:
    ui.log(f"  {description}…")
    yield


@contextmanager
def _plain_bar(description: str, total: int) -> Iterator[ProgressFn]:
    last = [0]

    def quiet(done: int, total_: int) -> None:
        pct = int(100 * done / total_) if total_ else 100
        if pct >= last[0] + 25 or done == total_:
            last[0] = pct
            ui.log(f"  {description}: {pct}% of {total_ / 1e6:.1f} MB")

    yield quiet


@contextmanager
def routed() -> Iterator[None]:
    """While active, threads registered with board_log() write the pipeline's output to their log."""
    global _depth, _router
    with _lock:
        if _depth == 0:
            _saved.update(err=ui.err, spinner=ui.spinner, transfer_bar=ui.transfer_bar)
            _router = _ThreadRouter(ui.err)
            ui.err = Console(file=_router, highlight=False, force_terminal=False, width=160)  # type: ignore[arg-type]
            ui.spinner = _plain_spinner
            ui.transfer_bar = _plain_bar
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                ui.err, ui.spinner, ui.transfer_bar = _saved["err"], _saved["spinner"], _saved["transfer_bar"]
                _router = None


def current_sink() -> IO[str]:
    """This thread's board log while routed, else the real stderr (for tracebacks)."""
    router = _router
    sink = router.sinks.get(threading.get_ident()) if router is not None else None
    return sink if sink is not None else sys.stderr


def real_console() -> Console:
    """The console on the real stderr (for the live view), also while routed."""
    console: Console = _saved["err"] if _depth else ui.err
    return console


@contextmanager
def board_log(path: Path) -> Iterator[None]:
    """Send this thread's pipeline output to path (appending: one file across retries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        router = _router
        if router is not None:
            router.sinks[threading.get_ident()] = f
        try:
            yield
        finally:
            if router is not None:
                router.sinks.pop(threading.get_ident(), None)
