"""Shared fixtures. Every test gets its own edgedeploy state dir; the model cache is shared
(the SmolLM2 GGUF comes from PyPI once per machine)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boards.adb_fixtures import *  # noqa: F403  (emulated Android device)
from tests.boards.fixtures import *  # noqa: F403  (emulated SSH boards)
from tests.boards.serial_fixtures import *  # noqa: F403  (pty serial console)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def edgedeploy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "edgedeploy-home"
    monkeypatch.setenv("EDGEDEPLOY_HOME", str(home))
    monkeypatch.delenv("EDGEDEPLOY_RUNS", raising=False)
    return home


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from toolchain.models.catalog import load_catalog
    from toolchain.models.sources import obtain

    return obtain(load_catalog()["smollm2-135m-instruct"], "Q4_1")


@pytest.fixture()
def cli_env(edgedeploy_home: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["EDGEDEPLOY_HOME"] = str(edgedeploy_home)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    yield env
