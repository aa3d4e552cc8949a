"""A lab whose boards fail the ways real ones do (tests/boards/replay, replay/faults.py): one clean;
one behind a lossy link (8 % of packets dropped each way) that also goes silent for 3 s
mid-transfer; one whose sshd is killed mid-transfer and comes back (a flaky board); one that
reboots while its runner runs (every process killed, the disk kept, a new boot_id); one whose sshd
is killed mid-transfer and never comes back; one whose sshd is killed while the release is being
staged; one whose sshd is killed while the runner runs (the link drops, no reboot); one that
reboots mid-transfer. Every board must end passed, or failed as infrastructure after its
retries; a cut upload must resume, not restart; and no board may be left with a half-installed
release, a staging dir, or a `current` that is not a release that passed.

The boards are real sshd's in their own namespaces behind a 20 ms link (a TUN delay line on this
kernel, which has no netem); the faults are real (packets dropped, processes SIGKILLed, TCP
connections reset or silent), only the probe, the board's python scripts and the runner answer
from a recording. Root only, like every namespace rig here (tests/boards/README.md).
"""

from __future__ import annotations

import json
import posixpath
import time
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.boards.replay import faults, fleet
from tests.boards.replay.board import DEPLOY_ROOT, ReplayBoard
from tests.conftest import REPO
from toolchain.core.errors import EXIT_TARGET
from toolchain.fleet.document import BoardRow
from toolchain.fleet.locks import LOCK_NAME
from toolchain.models.gguf_reader import sha256_file

BOARDS = list(faults.SCENARIOS)  # each board is named after the fault it gets (faults.scenario)
RELEASE_FILES = {"events.py", "manifest.json", "model.gguf", "run.sh", "runner.py", "settings.json"}
REPORT_SCHEMA = REPO / "docs" / "lab-report.schema.json"


def disk(board: ReplayBoard) -> Path:
    return board.path(DEPLOY_ROOT)


def releases_on(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "releases").iterdir()) if (root / "releases").is_dir() else []


def check_no_half_install(name: str, root: Path, sha: str) -> None:
    """Every release dir is whole (all its files, a manifest naming this model, the model link
    resolving to a verified file in the store); no staging dir is left; `current`, if any, names
    one of them."""
    for rid in releases_on(root):
        assert not rid.endswith(".partial"), f"{name}: staging dir {rid} left behind"
        rel = root / "releases" / rid
        assert {p.name for p in rel.iterdir()} >= RELEASE_FILES, f"{name}: {rid} is half-installed: {sorted(p.name for p in rel.iterdir())}"
        manifest = json.loads((rel / "manifest.json").read_text())
        assert manifest["release"] == rid
        model_entry = next(f for f in manifest["files"] if f["path"] == "model.gguf")
        assert model_entry["sha256"] == sha
        link = (rel / "model.gguf").readlink()
        assert str(link) == f"../../models/{sha}.gguf", link
        assert sha256_file(root / "models" / f"{sha}.gguf") == sha, f"{name}: the store's model does not match its name"
    if (root / "current").is_symlink():
        target = posixpath.normpath(str((root / "current").readlink()))
        assert target.startswith("releases/") and target[len("releases/"):] in releases_on(root), f"{name}: current -> {target}"


def final_report(row: BoardRow) -> dict[str, Any]:
    assert row["run_dir"] is not None, row
    doc: dict[str, Any] = json.loads(Path(row["run_dir"], "report.json").read_text())
    return doc


def cmdlines(board: ReplayBoard) -> list[str]:
    out = []
    for pid in board.pids():
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return out


def attempt_error(log: str, attempt: int) -> str | None:
    """Why attempt N failed, as the lab wrote it into the board's pipeline.log (scheduler.py)."""
    head = f"attempt {attempt} failed (infrastructure): "
    return next((line[len(head):] for line in log.splitlines() if line.startswith(head)), None)


@pytest.mark.slow
def test_lab_of_faulty_boards_ends_each_board_passed_or_retried_with_no_half_installed_release(replay_home: Path, tmp_path: Path) -> None:
    t_test = time.monotonic()
    rec = fleet.record(tmp_path / "work", replay_home, full=True)
    gguf = tmp_path / "work" / "synth-replay.gguf"
    size, sha = gguf.stat().st_size, sha256_file(gguf)
    with ExitStack() as stack:
        boards = {name: stack.enter_context(ReplayBoard(rec.dir)) for name in BOARDS}
        armed = {name: f for name, board in boards.items() if (f := faults.scenario(name, board, size)) is not None}
        fleet.write_ssh_config(replay_home, list(boards.values()), BOARDS)
        lab = fleet.write_lab(tmp_path / "lab.yaml", len(BOARDS), rec.plan, name="faults", names=BOARDS,
                              retries="{attempts: 3, backoff: 2s}", timeouts="{job: 15m, lock_wait: 2m}")
        for f in armed.values():
            f.start()
        t_lab = time.monotonic()
        result = fleet.run(lab, probe_only=False)
        wall = time.monotonic() - t_lab
        for f in armed.values():
            f.stop()
        rows = {r["name"]: r for r in result.doc["boards"]}
        print("\n" + faults.outcomes_table(result.doc["boards"], armed, wall) + f"\ntest wall time {time.monotonic() - t_test:.1f} s")
        for name, f in armed.items():
            assert f.error is None and f.fired is not None, f"{name}: {f.describe()}: {f.error!r}"
        logs = {name: (result.run_dir / "boards" / name / "pipeline.log").read_text() for name in BOARDS}

        # --- outcomes: passed, or infrastructure after every retry; the lab's exit code says so
        assert result.exit_code == EXIT_TARGET, {n: r["status"] for n, r in rows.items()}
        for name in BOARDS:
            r = rows[name]
            if name == "dead":
                assert not r["passed"] and r["failure_class"] == "infrastructure" and r["attempts"] == 3, r
                assert "connection refused" in (r["error"] or "") and logs[name].count("failed (infrastructure)") == 3
            else:
                assert r["passed"] and r["failure_class"] is None, (name, r["status"], r["error"], logs[name][-2000:])
                checks = {c["name"]: c["outcome"] for c in r["checks"]}
                assert checks["deployed and ran"] == "passed" and checks["meets the decode budget"] == "passed", checks
        assert rows["clean"]["attempts"] == 1
        # TCP carries SSH through 8 % loss and a 3 s silence: slower, no retry needed
        assert rows["lossy"]["attempts"] == 1
        lossy_transfer = sum(s["duration_s"] or 0.0 for s in rows["lossy"]["stages"] if s["name"] == "transfer")
        assert lossy_transfer >= 3.0, rows["lossy"]["stages"]
        for name, why in (("flaky", "connection lost with"), ("rebooted", "the board rebooted during the run (boot_id"),
                          ("cut-install", ""), ("flaky-run", "the connection dropped during the run"),
                          ("rebooted-xfer", "connection lost with")):
            r = rows[name]
            assert r["attempts"] == 2 and r["status"] == "passed after 1 retry", (name, r["status"])
            first = attempt_error(logs[name], 1)
            assert first is not None and why in first, (name, first)
        assert "the board did not reboot" in (attempt_error(logs["flaky-run"], 1) or "")  # told apart by boot_id
        # the retry took back the lock its cut-off attempt left, at once (not after lock.ttl, 120 s)
        for name in ("flaky", "cut-install"):
            assert "took back the board lock" in logs[name], logs[name][-1500:]
            assert rows[name]["lock"]["waited_s"] < 10 and rows[name]["lock"]["took_over"] is None, rows[name]["lock"]
            assert rows[name]["duration_s"] < 60, rows[name]["stages"]

        # --- a cut upload resumed from what the board held (a reboot keeps the disk, so its partial too)
        for name in ("flaky", "rebooted-xfer"):
            rel = final_report(rows[name])["release"]
            cut_at = int(str(armed[name].detail["partial_bytes"]))
            assert 0 < rel["model_bytes_sent"] <= size - cut_at and not rel["model_already_present"], (name, rel, cut_at, size)
            assert "resuming upload at" in logs[name]
        # after a cut run or a cut install the model is already whole in the store: not sent again
        for name in ("rebooted", "cut-install", "flaky-run"):
            rel = final_report(rows[name])["release"]
            assert rel["model_bytes_sent"] == 0 and rel["model_already_present"], (name, rel)

        # --- every board's disk: whole releases only, current = the release that passed, model verified
        for name, board in boards.items():
            root = disk(board)
            check_no_half_install(name, root, sha)
            if name == "dead":  # never got a release: the partial upload waits to be resumed, nothing is current
                assert releases_on(root) == [] and not (root / "current").exists()
                assert (root / "models" / f"{sha}.gguf.partial").stat().st_size < size
                assert not (root / "models" / f"{sha}.gguf").exists()
                assert (root / LOCK_NAME).is_dir()  # left by the job that lost the board: it expires by itself
                continue
            rel = final_report(rows[name])["release"]
            assert rel["activated"] and (root / "current").readlink() == Path("releases") / rel["id"], (name, rel)
            assert (root / "activations.log").read_text().split() == [rel["id"]]  # only the release that passed was ever current
            assert not list((root / "models").glob("*.partial")) and not (root / LOCK_NAME).exists()
        # sshd killed mid-run: the orphaned runner (held 60 s) was stopped before the retry measured, not left
        # to compete with it; a process naming the cut release would still be sleeping here otherwise
        cut_release = f"{DEPLOY_ROOT}/releases/{armed['flaky-run'].detail['release']}/"
        assert [c for c in cmdlines(boards["flaky-run"]) if cut_release in c] == []
        assert "stopped its leftover runner" in logs["flaky-run"], logs["flaky-run"][-1500:]
        # the release whose run was cut is there, whole, never current (the rebooted board kept its disk)
        for name in ("rebooted", "flaky-run"):
            assert len(releases_on(disk(boards[name]))) == 2 and armed[name].detail["release"] in releases_on(disk(boards[name]))

        # --- the lab's reports say the same: report.json to its schema, JUnit <error> for infrastructure only
        jsonschema.validate(result.doc, json.loads(REPORT_SCHEMA.read_text()))
        suites = {s.get("name"): s for s in ET.parse(result.run_dir / "junit.xml").getroot().iter("testsuite")}
        for name in BOARDS:
            s = suites[name]
            props = {p.get("name"): p.get("value") for p in s.iter("property")}
            assert props["retries"] == str(rows[name]["retries"])
            if name == "dead":
                assert int(s.get("errors", "0")) >= 1 and int(s.get("failures", "0")) == 0 and props["failure_class"] == "infrastructure"
                assert all(e.get("type") == "infrastructure" for e in s.iter("error"))
            else:
                assert s.get("errors") == "0" and s.get("failures") == "0", (name, ET.tostring(s)[:500])
        assert {n: b.misses() for n, b in boards.items()} == {n: [] for n in BOARDS}  # every answer came from the recording
