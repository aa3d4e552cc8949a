"""The lab on emulated SSH boards (real sshd per board, tests/boards/sshd.py): the real pipeline
with real inference (SmolLM2), one board unreachable and one missing its budget; board locks
contended by two lab runs, a busy board, an expired lock taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmlschema

from tests.boards.sshd import SshBoard
from tests.conftest import REPO
from toolchain.core.errors import EXIT_TARGET
from toolchain.core.nouns import Budget, TargetSpec
from toolchain.core.paths import cache_dir
from toolchain.core.serde import to_json_dict
from toolchain.fleet.inventory import load_lab
from toolchain.fleet.job import run_lab
from toolchain.fleet.locks import LOCK_NAME, BoardLock
from toolchain.models.gguf_reader import sha256_file
from toolchain.plan.basis import Overrides
from toolchain.plan.request import PlanRequest, plan_for
from toolchain.transports.ssh import SshTransport

JUNIT_XSD = REPO / "tests" / "fixtures" / "junit" / "junit-10.xsd"
REPORT_SCHEMA = REPO / "docs" / "lab-report.schema.json"


@pytest.fixture
def ssh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.ssh/config names each board by an alias; nothing from this machine's ~/.ssh."""
    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(cache_dir()))  # the shared model cache, before HOME moves
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for var in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD", "EDGEDEPLOY_SSH_COPY", "CI_JOB_ID", "GITHUB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return home


def alias(home: Path, boards: dict[str, SshBoard]) -> None:
    (home / ".ssh" / "config").write_text("".join(
        b.ssh_config_path.read_text().replace(f"Host {b.name}\n", f"Host {name}\n", 1) for name, b in boards.items()))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lab_of_ssh_boards_real_pipeline(ssh_board_factory: Callable[..., SshBoard], ssh_home: Path, tmp_path: Path,
                                         smollm2_gguf: Path, cli_env: dict[str, str]) -> None:
    boards = {"pi": ssh_board_factory("rpi4-4gb"), "opi": ssh_board_factory("orangepi5"), "jetson": ssh_board_factory("jetson-orin-nano")}
    alias(ssh_home, boards)
    # The jetson ships a saved plan under an impossible budget: it runs, and misses.
    plan = plan_for(None, PlanRequest(budget=Budget(5000.0), models=("smollm2-135m-instruct",), quants=("Q4_1",),
                                      board="jetson-orin-nano-8gb", overrides=Overrides(threads=1)))
    (tmp_path / "jetson-plan.json").write_text(json.dumps(to_json_dict(plan)))
    deploy = tmp_path / "deploy"
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"""name: e2e
defaults: {{model: smollm2-135m-instruct, quant: Q4_1, budget: 5s, probe: quick, threads: 1}}
retries: {{attempts: 2, backoff: 0.2s}}
timeouts: {{job: 20m, board: 15m, lock_wait: 1m}}
boards:
  pi: {{transport: ssh, host: pi, board: rpi4-4gb, python: {sys.executable}, deploy_dir: {deploy}/pi, labels: [pi]}}
  opi: {{transport: ssh, host: opi, board: orangepi5-8gb, python: {sys.executable}, deploy_dir: {deploy}/opi}}
  jetson: {{transport: ssh, host: jetson, python: {sys.executable}, deploy_dir: {deploy}/jetson, plan: jetson-plan.json, budget: 0.5ms}}
  gone: {{target: "root@127.0.0.1:{closed_port()}", board: rpi4-4gb, deploy_dir: {deploy}/gone, labels: [pi]}}
""")
    summary = tmp_path / "step-summary.md"
    env = {**cli_env, "HOME": str(ssh_home), "EDGEDEPLOY_CACHE": os.environ["EDGEDEPLOY_CACHE"], "GITHUB_STEP_SUMMARY": str(summary)}
    db = tmp_path / "history.sqlite"
    proc = subprocess.run(["edgedeploy", "lab", "run", str(lab), "--history", f"sqlite:///{db}", "--out", str(tmp_path / "runs"), "--json"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == EXIT_TARGET, proc.stderr  # an unreachable board outranks a missed budget
    doc = json.loads(proc.stdout)
    rows = {b["name"]: b for b in doc["boards"]}
    assert doc["counts"] == {"boards": 4, "passed": 2, "infrastructure": 1, "configuration": 0, "result": 1}, proc.stderr
    # one infrastructure failure: unreachable, retried once, nothing else judged
    gone = rows["gone"]
    assert gone["failure_class"] == "infrastructure" and gone["retries"] == 1 and "connection refused" in gone["error"]
    assert gone["status"] == "infrastructure failure (after 1 retry)"
    assert {c["name"]: c["outcome"] for c in gone["checks"]} == {
        "reachable": "error", "deployed and ran": "skipped", "fits memory": "skipped", "meets the decode budget": "skipped",
        "prediction within tolerance": "skipped", "no decode regression": "skipped"}
    # one result failure: ran, measured, missed the budget
    jet = rows["jetson"]
    outcomes = {c["name"]: c["outcome"] for c in jet["checks"]}
    assert jet["failure_class"] == "result" and outcomes["meets the decode budget"] == "failed"
    assert outcomes["reachable"] == outcomes["deployed and ran"] == outcomes["fits memory"] == "passed"
    assert jet["measured"]["decode_tokens_per_s"] > 0 and jet["budget"]["decode_ms_per_token"] == 0.5
    # the rest pass, measured on the board, with provenance
    sha = sha256_file(smollm2_gguf)
    for name in ("pi", "opi"):
        b = rows[name]
        assert b["passed"] and b["status"] == "passed", b
        assert b["gguf_sha256"] == sha and b["quant"] == "Q4_1" and b["llama_cpp_version"] and b["measured"]["decode_tokens_per_s"] > 0
        assert [s["name"] for s in b["stages"]][:3] == ["connect", "lock", "probe"] and b["stages"][-1]["name"] == "validate"
        assert Path(b["run_dir"], "telemetry.jsonl").exists()
    assert rows["pi"]["fingerprint"].startswith("Raspberry Pi 4 Model B") and doc["edgedeploy_version"]
    assert not any((deploy / n / LOCK_NAME).exists() for n in ("pi", "opi", "jetson"))  # every lock released
    # reports: valid JUnit and JSON, HTML with its plots, the Markdown summary where GitHub wants it
    run_dir = Path(doc["run_dir"])
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(run_dir / "junit.xml"))
    jsonschema.validate(json.loads((run_dir / "report.json").read_text()), json.loads(REPORT_SCHEMA.read_text()),
                        format_checker=jsonschema.FormatChecker())
    junit = (run_dir / "junit.xml").read_text()
    assert junit.count("<testsuite ") == 4 and 'name="meets the decode budget"' in junit and "<error" in junit and "<failure" in junit
    html = (run_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4 and "connection refused" in html
    assert "❌ edgedeploy lab `e2e`: FAILED" in summary.read_text() and "| pi |" in summary.read_text()
    # the HTML as a person sees it: headless Chromium renders it
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000",
                    f"--screenshot={shot}", (run_dir / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    # the history has the run
    proc = subprocess.run(["edgedeploy", "report", "--history", "--history-url", f"sqlite:///{db}", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    trends = {r["board"]: r for r in json.loads(proc.stdout)}
    assert set(trends) == {"pi", "opi", "jetson", "gone"} and trends["pi"]["latest_decode_tokens_per_s"] > 0


def probe_lab(tmp_path: Path, deploy: Path, *, lock_wait: str = "1m", name: str = "locks") -> Path:
    lab = tmp_path / f"{name}.yaml"
    lab.write_text(f"name: {name}\nretries: {{attempts: 2, backoff: 0.1s}}\ntimeouts: {{lock_wait: {lock_wait}}}\n"
                   f"boards:\n  pi: {{transport: ssh, host: pi, deploy_dir: {deploy}, probe: quick}}\n")
    return lab


def test_two_lab_runs_contend_for_one_ssh_board(ssh_board_factory: Callable[..., SshBoard], ssh_home: Path, tmp_path: Path) -> None:
    alias(ssh_home, {"pi": ssh_board_factory("rpi4-4gb")})
    labs = [load_lab(probe_lab(tmp_path, tmp_path / "deploy", name=n)) for n in ("first", "second")]
    held: dict[str, tuple[float, float]] = {}
    results: dict[str, Any] = {}

    def one(i: int) -> None:
        results[labs[i].name] = run_lab(labs[i], probe_only=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name, r in results.items():
        b = r.doc["boards"][0]
        assert r.exit_code == 0 and b["passed"], b
        lock = next(s for s in b["stages"] if s["name"] == "lock")
        start = r.outcomes[0].started_at.timestamp()
        held[name] = (start + lock["started_s"] + lock["duration_s"], start + b["duration_s"])  # lock taken .. board done
    (_, first_done), (second_locked, _) = sorted(held.values())
    assert first_done <= second_locked + 0.05, held  # never both on the board at once
    waiter = max(results.values(), key=lambda r: r.doc["boards"][0]["lock"]["waited_s"])
    other = ({"first", "second"} - {waiter.doc["lab"]["name"]}).pop()
    lock = waiter.doc["boards"][0]["lock"]
    assert lock["waited_s"] > 0.2 and f"lab {other}" in lock["waited_for"], lock


def test_busy_board_fails_naming_the_holder_and_expired_lock_is_taken_over(
        ssh_board_factory: Callable[..., SshBoard], ssh_home: Path, tmp_path: Path) -> None:
    board = ssh_board_factory("rpi4-4gb")
    alias(ssh_home, {"pi": board})
    deploy = tmp_path / "deploy"
    # another CI job holds the board (heartbeat running): this job waits 2 s, then fails naming it
    with SshTransport(TargetSpec(name="pi", kind="ssh", host="pi")) as t, \
            BoardLock(t, str(deploy), lab="nightly", ttl_s=30, owner="ci-runner-7 pid 99", job="4242").held(wait_s=5):
        t0 = time.monotonic()
        busy = run_lab(load_lab(probe_lab(tmp_path, deploy, lock_wait="2s")), probe_only=True)
        assert 2.0 <= time.monotonic() - t0 < 30
    b = busy.doc["boards"][0]
    assert busy.exit_code == EXIT_TARGET and b["failure_class"] == "infrastructure" and b["attempts"] == 1  # waiting again would not help
    assert "board is locked by ci-runner-7 pid 99 (CI job 4242, lab nightly" in b["error"] and "timeouts.lock_wait" in b["hint"]
    assert {c["name"]: c["outcome"] for c in b["checks"]} == {"reachable": "passed", "probed": "error"}
    assert not (deploy / LOCK_NAME).exists()  # the holder released it on the way out
    # a job killed while holding the lock left it behind; once expired, the next job takes it over
    lock = deploy / LOCK_NAME
    lock.mkdir(parents=True)
    (lock / "owner.json").write_text(json.dumps({"token": "dead", "acquired_at": int(time.time()) - 600, "expires_at": int(time.time()) - 5,
                                                 "owner": "killed-runner pid 1", "job": "1313", "lab": "nightly"}))
    took = run_lab(load_lab(probe_lab(tmp_path, deploy, lock_wait="2s")), probe_only=True)
    b = took.doc["boards"][0]
    assert took.exit_code == 0 and b["passed"] and b["lock"]["took_over"].startswith("killed-runner pid 1 (CI job 1313")
    assert not lock.exists()


def test_heartbeat_keeps_a_long_job_s_lock(ssh_board_factory: Callable[..., SshBoard], ssh_home: Path, tmp_path: Path) -> None:
    alias(ssh_home, {"pi": ssh_board_factory("rpi4-4gb")})
    with SshTransport(TargetSpec(name="pi", kind="ssh", host="pi")) as t:
        holder = BoardLock(t, str(tmp_path), lab="long", ttl_s=3, job="1")
        with holder.held(wait_s=1):
            time.sleep(4.5)  # past the ttl: only the heartbeat keeps it
            other = BoardLock(t, str(tmp_path), lab="other", ttl_s=3, job="2")
            seen = other.try_acquire()
            assert seen is not None and seen.job == "1" and other.took_over is None and not holder.lost
        assert other.try_acquire() is None  # released on the way out: free again
        other.release()
