"""The live view of a lab run on stderr: one line per board with its stage.

On a terminal a rich Live table redrawn in place; in CI logs (not a TTY) one plain line per
change, so the log reads as a timeline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass(frozen=True)
class BoardLine:
    board: str
    stage: str
    elapsed_s: float
    attempt: int
    note: str = ""
    done: bool = False
    passed: bool | None = None


class LiveView:
    """Context manager; `show(lines)` whenever anything changed (cheap to call often)."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.tty = console.is_terminal
        self._last: dict[str, tuple[str, str, bool]] = {}
        self._lines: list[BoardLine] = []
        self._live: Live | None = None
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def __enter__(self) -> LiveView:
        if self.tty:
            self._live = Live(get_renderable=self._table, console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        else:
            self.console.print(f"{self.title}", markup=False, highlight=False)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def show(self, lines: list[BoardLine]) -> None:
        with self._lock:
            self._lines = list(lines)
            if self.tty:
                return  # Live redraws from _table on its own clock
            for line in lines:
                key = (line.stage, line.note, line.done)
                if self._last.get(line.board) != key:
                    self._last[line.board] = key
                    self.console.print(_plain(line, time.monotonic() - self._t0), markup=False, highlight=False, soft_wrap=True)

    def _table(self) -> Table:
        with self._lock:
            lines = list(self._lines)
        table = Table(title=self.title, title_justify="left", box=None, pad_edge=False)
        for col in ("board", "stage", "time", "note"):
            table.add_column(col, no_wrap=col != "note")
        for line in lines:
            style = "green" if line.passed else ("red" if line.done else "cyan")
            stage = line.stage + (f" (try {line.attempt})" if line.attempt > 1 and not line.done else "")
            table.add_row(line.board, f"[{style}]{stage}[/]", f"{line.elapsed_s:5.0f}s", line.note)
        return table


def _plain(line: BoardLine, since_start: float) -> str:
    attempt = f" (try {line.attempt})" if line.attempt > 1 and not line.done else ""
    note = f": {line.note}" if line.note else ""
    return f"[{since_start:6.1f}s] {line.board}: {line.stage}{attempt}{note}"


ViewFactory = Callable[[str], LiveView]
