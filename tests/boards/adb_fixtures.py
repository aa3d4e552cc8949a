"""pytest fixtures for the emulated phone (tests/boards/adb_device.py) and a private adb server.

tests/conftest.py star-imports this module (see __all__), so every test can use these fixtures.

- `adb_server` (session): Debian's real adb server on a free port of its own, with its own HOME
  (so its RSA key and state stay out of the user's ~/.android); killed at session end.
- `adb_device`: one emulated Pixel 8, connected (`adb connect`); `.serial` is "127.0.0.1:PORT".
- `start_adb_device(shell_v2=..., legacy_pty=..., state=...)`: more devices, old ones without
  shell_v2 (raw, or on a CRLF-translating PTY like Android < 7), or
  phones the server sees as "unauthorized" / "offline". All are disconnected and stopped at
  teardown, so every test starts with no device attached.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.boards.adb_device import AdbDevice

# What tests/conftest.py's star import picks up: the fixtures and the types tests annotate with.
__all__ = ["AdbServer", "RunningDevice", "adb_device", "adb_server", "phone_board", "start_adb_device"]

BOARDS_DIR = Path(__file__).resolve().parent
PHONE_BOARD = BOARDS_DIR / "pixel8"
ADB_MISSING = (
    "adb is not installed: run the project's setup script (it installs Debian's adb: apt-get install -y adb), "
    "or point $ADB at an adb binary"
)


def find_adb() -> str:
    adb = os.environ.get("ADB") or shutil.which("adb")
    if not adb or not os.access(adb, os.X_OK):
        pytest.fail(ADB_MISSING, pytrace=False)
    return adb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class AdbServer:
    adb: str
    port: int
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.adb, "-P", str(self.port), *args],
            capture_output=True, text=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL, check=False,
        )

    def devices(self) -> dict[str, str]:
        """serial -> state, as `adb devices` lists them."""
        out = self.run("devices").stdout
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


@dataclass
class RunningDevice:
    device: AdbDevice
    server: AdbServer
    connector: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def serial(self) -> str:
        return self.device.serial

    @property
    def server_port(self) -> int:
        return self.server.port

    @property
    def board(self) -> Path:
        return self.device.board

    @property
    def data_dir(self) -> Path:
        """The directory behind the phone's /data/local/tmp."""
        return self.device.data_dir


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    adb = find_adb()
    home = tmp_path_factory.mktemp("adb-home")
    # The server inherits this environment: its key goes to this HOME, not the user's.
    env = {**os.environ, "HOME": str(home)}
    env.pop("ANDROID_SERIAL", None)
    server = AdbServer(adb, free_port(), env)
    started = server.run("start-server", timeout=60)
    assert started.returncode == 0, f"adb start-server failed: {started.stderr}"
    try:
        yield server
    finally:
        server.run("kill-server")


@pytest.fixture(scope="session")
def phone_board() -> Path:
    """The emulated phone's overlay: tests/boards/pixel8 (Pixel 8, Android 14)."""
    return PHONE_BOARD


@pytest.fixture
def start_adb_device(adb_server: AdbServer, phone_board: Path) -> Iterator[Callable[..., RunningDevice]]:
    started: list[RunningDevice] = []

    def start(
        *,
        shell_v2: bool = True,
        legacy_pty: bool = False,
        state: str = "device",
        board: Path | None = None,
        sync_bytes_per_s: float | None = None,
    ) -> RunningDevice:
        device = AdbDevice(
            board or phone_board,
            shell_v2=shell_v2,
            legacy_pty=legacy_pty,
            state=state,
            sync_bytes_per_s=sync_bytes_per_s,
        ).start()
        running = RunningDevice(device, adb_server)
        started.append(running)
        if state == "offline":
            # adb connect waits 10 s for a CNXN that never comes, but lists the device as offline
            # at once: connect in the background and wait for the listing.
            running.connector = subprocess.Popen(
                [adb_server.adb, "-P", str(adb_server.port), "connect", device.serial],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=adb_server.env,
            )
        else:
            # "connected to ..." for a device; "failed to authenticate to ..." when unauthorized.
            out = adb_server.run("connect", device.serial)
            assert device.serial in out.stdout, f"adb connect {device.serial}: {out.stdout}{out.stderr}"
        deadline = time.monotonic() + 15
        while adb_server.devices().get(device.serial) != state:
            assert time.monotonic() < deadline, f"{device.serial} never became {state}: {adb_server.devices()}"
            time.sleep(0.1)
        return running

    try:
        yield start
    finally:
        for running in started:
            adb_server.run("disconnect", running.serial)
            if running.connector is not None:
                running.connector.kill()
                running.connector.wait()
            running.device.stop()


@pytest.fixture
def adb_device(start_adb_device: Callable[..., RunningDevice]) -> RunningDevice:
    """One connected Pixel 8 with shell_v2."""
    return start_adb_device()
