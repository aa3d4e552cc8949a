"""Replay boards (tests/boards/replay): emulated boards in their own network namespaces behind a
delayed link, answering from a recording. bench/lab_scale.py runs 32 of them; these check that
they are what it assumes: the delay is on the wire, the answers come from the recording (and
take the recorded time), and edgedeploy's real lab passes over them."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.boards.replay import fleet
from tests.boards.replay.board import DEPLOY_ROOT, ReplayBoard
from toolchain.fleet.locks import LOCK_NAME


def handshake_s(board: ReplayBoard) -> float:
    """One TCP handshake to the board's sshd: a round trip on the link."""
    t = time.perf_counter()
    with socket.create_connection((board.host, board.port), timeout=5):
        return time.perf_counter() - t


def recorded(rec: fleet.Recording, kind: str, command: str | None = None) -> dict[str, object]:
    """The recording's note on one answer (kind "answer", by command) or on the runner (kind "runner")."""
    entries = [json.loads(line) for line in (rec.dir / "index.jsonl").read_text().splitlines()]
    return next(e for e in entries if e["kind"] == kind and (command is None or e["command"] == command))


def test_probe_only_lab_over_two_replay_boards(replay_home: Path, tmp_path: Path) -> None:
    rec = fleet.record(tmp_path / "work", replay_home, full=False)
    probe = recorded(rec, "answer", "sh -s")  # the probe's one script, answered from here from now on
    assert probe["status"] == 0
    with ReplayBoard(rec.dir) as a, ReplayBoard(rec.dir) as b:
        assert a.host != b.host and a.link in ("netem", "delay line")
        # The delay is on the wire: every handshake waits a round trip (2 x 10 ms), not loopback's microseconds.
        rtts = [handshake_s(board) for board in (a, b) for _ in range(3)]
        assert min(rtts) >= 0.015, rtts
        fleet.write_ssh_config(replay_home, [a, b])
        result = fleet.run(fleet.write_lab(tmp_path / "lab.yaml", 2, None), probe_only=True)
        assert result.exit_code == 0, fleet.failure(result)
        rows = {r["name"]: r for r in result.doc["boards"]}
        assert set(rows) == {"b00", "b01"} and all(r["passed"] for r in rows.values())
        for row in rows.values():
            assert row["run_dir"] is not None
            facts = json.loads(Path(row["run_dir"], "facts.json").read_text())
            assert facts["cpu"]["cores"] == 4 and facts["os"]["arch"] == "aarch64"  # the recorded Pi 4, not this machine
            stages = {s["name"]: s["duration_s"] or 0.0 for s in row["stages"]}
            # answered after the recorded time, plus the link's round trips (the script goes up, the answer down)
            assert stages["probe"] >= float(str(probe["duration_s"])) + 0.02, stages
        assert a.misses() == [] and b.misses() == []  # nothing of a replayed kind ran for real
        # Each board has its own deploy root (same path, private tmpfs): the locks were there, and are released.
        for board in (a, b):
            assert board.path(DEPLOY_ROOT).is_dir() and not (board.path(DEPLOY_ROOT) / LOCK_NAME).exists()
        assert not Path(DEPLOY_ROOT).exists()  # nothing leaked onto this machine


@pytest.mark.slow
def test_full_lab_run_ships_and_replays_the_runner(replay_home: Path, tmp_path: Path) -> None:
    rec = fleet.record(tmp_path / "work", replay_home, full=True)
    runner = recorded(rec, "runner")
    with ReplayBoard(rec.dir) as a, ReplayBoard(rec.dir) as b:
        fleet.write_ssh_config(replay_home, [a, b])
        result = fleet.run(fleet.write_lab(tmp_path / "lab.yaml", 2, rec.plan), probe_only=False)
        assert result.exit_code == 0, fleet.failure(result)
        for row in result.doc["boards"]:
            assert row["passed"] and {c["name"]: c["outcome"] for c in row["checks"]}["meets the decode budget"] == "passed", row
            stages = [s["name"] for s in row["stages"]]
            assert stages.count("run") == 1 and "transfer" in stages and stages[-1] == "validate"  # passed the first time
            run_s = next(s["duration_s"] or 0.0 for s in row["stages"] if s["name"] == "run")
            assert run_s >= float(str(runner["duration_s"])), (run_s, runner)  # the runner took its recorded time
            assert row["run_dir"] is not None and Path(row["run_dir"], "telemetry.jsonl").read_text().count("\n") == runner["events"]
        assert a.misses() == [] and b.misses() == []
        for board in (a, b):  # the model went over the link into each board's own store, and the release is current
            root = board.path(DEPLOY_ROOT)
            assert len(list((root / "models").glob("*.gguf"))) == 1 and (root / "current").is_symlink()
