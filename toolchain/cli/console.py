"""Human output on stderr (stdout is reserved for the one JSON document of --json)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from toolchain.transports.base import ProgressFn

err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def log(message: str) -> None:
    err.print(message, markup=False)


def step(message: str) -> None:
    err.print(f"[bold cyan]›[/] {message}", markup=True, highlight=False)


@contextmanager
def transfer_bar(description: str, total: int) -> Iterator[ProgressFn]:
    """A progress bar with bytes, rate and time left; a no-op callback when stderr is not a TTY."""
    if not sys.stderr.isatty():
        last = [0]

        def quiet(done: int, total_: int) -> None:
            # Non-interactive (CI logs): one line per 25%.
            pct = int(100 * done / total_) if total_ else 100
            if pct >= last[0] + 25 or done == total_:
                last[0] = pct
                log(f"  {description}: {pct}% of {total_ / 1e6:.1f} MB")

        yield quiet
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total_: bar.update(task, completed=done, total=total_)


@contextmanager
def spinner(description: str) -> Iterator[None]:
    if not sys.stderr.isatty():
        log(f"  {description}…")
        yield
        return
    with err.status(description):
        yield
