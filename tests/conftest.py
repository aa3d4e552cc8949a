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
KINDS = ("unit", "integration", "e2e")  # tests/<kind>/: the marker every test in it gets


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder (`pytest -m unit` runs the fast ones); a test outside the
    three folders is an error, so none goes unclassified."""
    for item in items:
        kind = next((k for k in KINDS if (REPO / "tests" / k) in item.path.parents), None)
        if kind is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/e2e")
        item.add_marker(kind)


@pytest.fixture(autouse=True)
def edgedeploy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "edgedeploy-home"
    monkeypatch.setenv("EDGEDEPLOY_HOME", str(home))
    monkeypatch.delenv("EDGEDEPLOY_RUNS", raising=False)
    # Every test starts with a device never measured: the first-contact calibration (~30 s here)
    # would run in each ship. It is off unless a test turns it on (tests/e2e/test_calibration.py).
    monkeypatch.setenv("EDGEDEPLOY_CALIBRATE", "0")
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
