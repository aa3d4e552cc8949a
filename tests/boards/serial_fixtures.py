"""pytest fixtures for the fake serial console (tests/boards/serial_console.py).

tests/conftest.py star-imports them (`from tests.boards.serial_fixtures import *`). The consoles are
module-scoped: socat and the console process start once, and each transport logs in afresh
(closing a SerialTransport logs out, back to the login prompt).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.boards.serial_console import SerialConsole

__all__ = ["noisy_serial_console", "serial_console"]  # what `from ... import *` in conftest takes


@pytest.fixture(scope="module")
def serial_console() -> Iterator[SerialConsole]:
    """A quiet console: login pi / raspberry, prompt pi@raspberrypi:~$."""
    with SerialConsole() as console:
        yield console


@pytest.fixture(scope="module")
def noisy_serial_console() -> Iterator[SerialConsole]:
    """The same, with kernel log lines written into the stream at random moments."""
    with SerialConsole(inject_kernel_logs=True) as console:
        yield console
