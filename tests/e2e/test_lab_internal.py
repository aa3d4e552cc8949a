"""A bug in edgedeploy during a board's run is an internal failure: exit 1, never retried, never
counted as the board's (infrastructure) fault. Boards are `local` (real locks, real history)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_lab_local import run
from toolchain.core.errors import EXIT_INTERNAL
from toolchain.core.events import Events
from toolchain.deploy.pipeline import DeployRequest
from toolchain.transports.base import Transport
from toolchain.verdict.report import Report


class Buggy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, transport: Transport, request: DeployRequest, events: Events, run_dir: Path) -> Report:
        self.calls += 1
        events.stage("plan")
        raise KeyError("selected")  # what a bug looks like from the outside


def test_a_bug_is_reported_once_as_internal(tmp_path: Path) -> None:
    ship = Buggy()
    result = run(tmp_path, ["a"], ship)
    row = result.doc["boards"][0]
    assert ship.calls == 1  # not retried like a flaky link
    assert row["failure_class"] == "internal" and row["exit_code"] == EXIT_INTERNAL and "KeyError" in row["error"]
    assert result.exit_code == EXIT_INTERNAL and result.doc["counts"]["internal"] == 1 and result.doc["counts"]["infrastructure"] == 0
    assert "Traceback" in (result.run_dir / "boards" / "a" / "pipeline.log").read_text()
