"""A lab of two serial-console boards, end to end over real pty consoles (socat + a getty-like
login, tests/boards/serial_console.py): the lab opens each console once, takes the board lock over
it and deploys over the same session (a UART is opened exclusively: a second open fails).

The consoles run a shell on this machine, so the boards' deploy directories are local folders. A
135M-parameter model does not cross a 115200-baud line in test time (edgedeploy refuses it with the
estimate), so each board's model store is seeded first, as a board imaged with its model would be:
the upload finds it by sha256 and sends nothing; runner, launcher and settings still cross the line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boards.serial_console import SerialConsole
from toolchain.deploy.pipeline import cached_sha256
from toolchain.fleet.inventory import load_lab
from toolchain.fleet.job import run_lab

pytestmark = pytest.mark.e2e


@pytest.fixture()
def two_consoles() -> Iterator[tuple[SerialConsole, SerialConsole]]:
    with SerialConsole() as a, SerialConsole() as b:
        yield a, b


def test_a_lab_of_two_serial_boards_deploys_over_one_session_each(
    two_consoles: tuple[SerialConsole, SerialConsole], smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAB_SERIAL_PASSWORD", "raspberry")
    sha = cached_sha256(smollm2_gguf)
    boards = []
    for name, console in zip(("uart-a", "uart-b"), two_consoles, strict=True):
        deploy = tmp_path / "deploy" / name
        (deploy / "models").mkdir(parents=True)
        os.link(smollm2_gguf, deploy / "models" / f"{sha}.gguf")
        boards.append(f"  {name}: {{transport: serial, device: {console.device}, baud: 115200, login_user: pi, "
                      f"login_password_env: LAB_SERIAL_PASSWORD, deploy_dir: {deploy}, python: {sys.executable}}}")
    lab = tmp_path / "lab.yaml"
    # `budget: reading` is a profile name (profiles/budgets.yaml), resolved as the CLI resolves it
    lab.write_text("name: uarts\ndefaults: {model: smollm2-135m-instruct, quant: Q4_1, budget: reading, ctx: 256}\n"
                   "timeouts: {stages: {run: 600s, probe: 600s, transfer: 600s}}\nboards:\n" + "\n".join(boards) + "\n")
    result = run_lab(load_lab(lab), history_url=f"sqlite:///{tmp_path / 'history.sqlite'}", parallel=2)
    rows = {b["name"]: b for b in result.doc["boards"]}
    logs = {n: (result.run_dir / "boards" / n / "pipeline.log").read_text() for n in rows}
    for name, row in rows.items():
        assert row["failure_class"] != "infrastructure" or "lock" not in (row["error"] or ""), (row, logs[name])
        assert row["measured"] is not None, (row["error"], logs[name])
        assert row["measured"]["decode_tokens_per_s"] > 0 and row["model"] == "smollm2-135m-instruct"
        assert row["budget"]["decode_ms_per_token"] == pytest.approx(120.0)
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
        assert report["release"]["model_already_present"] and report["release"]["model_bytes_sent"] == 0
        assert "connecting" not in logs[name]  # the lab connected; the pipeline did not open a second session
