"""pytest fixtures for emulated SSH boards. tests/conftest.py: `from tests.boards.fixtures import *`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.boards.sshd import SshBoard

__all__ = ["replay_home", "rpi4_board", "ssh_board_factory"]


@pytest.fixture
def ssh_board_factory() -> Iterator[Callable[..., SshBoard]]:
    """`ssh_board_factory("orangepi5", memory_limit_bytes=...)` -> a started SshBoard, stopped at teardown."""
    boards: list[SshBoard] = []

    def start(board: str | Path, *, port: int | None = None, memory_limit_bytes: int | None = None) -> SshBoard:
        b = SshBoard(board, port=port, memory_limit_bytes=memory_limit_bytes)
        boards.append(b)
        return b.start()

    yield start
    for b in boards:
        b.stop()


@pytest.fixture(scope="session")
def rpi4_board() -> Iterator[SshBoard]:
    """One Raspberry Pi 4 (4 GB, 64-bit) for the whole session: do not kill its connections."""
    with SshBoard("rpi4-4gb") as board:
        yield board


@pytest.fixture
def replay_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.ssh/config the lab reads (fleet.write_ssh_config); nothing from this machine's ~/.ssh."""
    from toolchain.core.paths import cache_dir

    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(cache_dir()))  # the shared model cache, before HOME moves
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD", "EDGEDEPLOY_SSH_COPY", "CI_JOB_ID", "GITHUB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return home
