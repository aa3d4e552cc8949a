"""Human output on stderr (stdout is reserved for the one JSON document of --json), and the CLI's
event sink: the pipeline's steps, spinners and rich progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from toolchain.core.events import quarter_lines
from toolchain.transports.base import ProgressFn

err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def log(message: str) -> None:
    err.print(message, markup=False)


def error(message: str, hint: str = "") -> None:
    """`error: ...` and `hint: ...`; the texts are data (a name with [/x] in it is not markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    if hint:
        err.print(f"[bold]hint:[/] {escape(hint)}", markup=True, highlight=False)


def step(message: str) -> None:
    err.print("[bold cyan]›[/] ", markup=True, highlight=False, end="")
    err.print(message, markup=False, highlight=False)


@contextmanager
def transfer_bar(description: str, total: int) -> Iterator[ProgressFn]:
    """A progress bar with bytes, rate and time left; one line per quarter when stderr is not a TTY."""
    if not sys.stderr.isatty():
        yield quarter_lines(description, log)
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


class ConsoleEvents:
    """The CLI's event sink (core.events.Events) on stderr."""

    def stage(self, name: str) -> None:
        pass  # the steps say it in words

    def step(self, message: str) -> None:
        step(message)

    def log(self, message: str) -> None:
        log(message)

    def busy(self, description: str) -> AbstractContextManager[None]:
        return spinner(description)

    def transfer(self, description: str, total: int) -> AbstractContextManager[ProgressFn]:
        return transfer_bar(description, total)
