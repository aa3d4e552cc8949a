"""The lab runner on `local` boards (this machine through LocalTransport: real locks, real
history, real reports) with a stand-in for pipeline.deploy where a test needs a scripted board:
a flaky link, a hung stage, a slowed-down board. tests/test_lab_e2e.py runs the real pipeline."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import xmlschema

from tests.conftest import REPO
from toolchain.core.errors import EXIT_TARGET, EXIT_VALIDATION, ServiceUnreachable, TargetError
from toolchain.core.events import Events
from toolchain.core.nouns import Plan, Release, Telemetry, Verdict
from toolchain.core.serde import from_dict
from toolchain.deploy.pipeline import DeployRequest
from toolchain.fleet.inventory import load_lab
from toolchain.fleet.job import run_lab
from toolchain.fleet.scheduler import DeployFn
from toolchain.store.history import History
from toolchain.store.records import BoardRecord, RunRecord
from toolchain.transports.base import Transport
from toolchain.verdict.report import Report, ShipFailed, VerdictFailed

JUNIT_XSD = REPO / "tests" / "fixtures" / "junit" / "junit-10.xsd"
REPORT_SCHEMA = REPO / "docs" / "lab-report.schema.json"
SHA = "ab" * 32


def lab_file(tmp_path: Path, boards: list[str], extra: str = "") -> Path:
    entries = "\n".join(f"  {b}: {{target: local, deploy_dir: {tmp_path / 'deploy' / b}, labels: [{'even' if i % 2 == 0 else 'odd'}]}}"
                        for i, b in enumerate(boards))
    path = tmp_path / "lab.yaml"
    path.write_text(f"name: unit\ndefaults: {{model: smollm2-135m-instruct, quant: Q4_1, budget: 100ms}}\n"
                    f"retries: {{attempts: 3, backoff: 0.1s}}\n{extra}\nboards:\n{entries}\n")
    return path


class FakeShip:
    """Stands in for pipeline.deploy: walks the stages, writes a run dir, reports scripted telemetry."""

    def __init__(self, tps: dict[str, float], *, fail_first: dict[str, int] | None = None, hang: dict[str, float] | None = None) -> None:
        self.tps = tps
        self.fail_first = dict(fail_first or {})
        self.hang = hang or {}
        self.calls: dict[str, int] = {}

    def __call__(self, transport: Transport, request: DeployRequest, events: Events, run_dir: Path) -> Report:
        spec, req = request.target, request.plan
        self.calls[spec.name] = self.calls.get(spec.name, 0) + 1
        for stage in ("probe", "plan", "package", "transfer", "run"):
            events.stage(stage)
            if stage == "run" and spec.name in self.hang:
                time.sleep(self.hang[spec.name])
            if stage == "transfer" and self.fail_first.get(spec.name, 0) >= self.calls[spec.name]:
                raise TargetError(f"{spec.name}: connection lost while a command ran", "check the network")
        events.stage("validate")
        tps = self.tps[spec.name]
        ok = 1000.0 / tps <= req.budget.decode_ms_per_token
        pred = {"decode_tokens_per_s": 20.0, "decode_ms_per_token": 50.0, "prefill_tokens_per_s": 200.0, "peak_memory_bytes": 400 << 20}
        plan = {"selected": {"model": "smollm2-135m-instruct", "quant": "Q4_1", "params": 134_515_008, "file_bytes": 100 << 20, "ctx": 512,
                             "kv_type": "f16", "threads": 2, "mode": "resident", "predicted": pred},
                "candidates": [], "basis": {"usable_memory_bytes": 4 << 30, "bandwidth_bytes_per_s": 10e9, "efficiency": 0.8},
                "budget": {"decode_ms_per_token": req.budget.decode_ms_per_token, "ttft_ms": None}}
        telemetry = {"load_s": 0.5, "ttft_s": 0.2, "prefill_tokens_per_s": 200.0, "decode_tokens_per_s": tps, "decode_ms_p50": 1000 / tps,
                     "decode_ms_p90": 1100 / tps, "decode_ms_p99": 1200 / tps, "peak_rss_bytes": 300 << 20, "llama_cpp": "0.3.36",
                     "threads": 2, "ctx": 512, "model_sha256": SHA, "temperature_before_c": 41.0, "temperature_after_c": 47.5,
                     "extra": {"latencies_ms": [1000 / tps * (1 + 0.05 * (i % 7)) for i in range(60)]}}
        release = {"id": "r1", "deploy_root": "/d", "path": "/d/releases/r1", "model_path": "/d/models/x.gguf", "model_sha256": SHA,
                   "model_bytes_sent": 0, "model_already_present": True}
        verdict = {"passed": ok, "checks": [
            {"name": "fits memory", "passed": True, "observed": 300 << 20, "limit": 4 << 30, "detail": "", "severity": "error"},
            {"name": "decode budget", "passed": ok, "observed": 1000 / tps, "limit": req.budget.decode_ms_per_token, "detail": "", "severity": "error"},
            {"name": "prediction decode", "passed": False, "observed": tps, "limit": 20.0, "detail": "off", "severity": "warning"}]}
        report = Report(target=spec.name, run_dir=str(run_dir), verdict=from_dict(Verdict, verdict), plan=from_dict(Plan, plan),
                        release=from_dict(Release, release), telemetry=from_dict(Telemetry, telemetry))
        (run_dir / "report.json").write_text(json.dumps(report.document()))  # (no real report.md: a scripted board)
        (run_dir / "report.md").write_text(f"# {spec.name}\n")
        if not ok:
            raise ShipFailed(VerdictFailed("validation failed: decode budget", "see report.md"), report)
        return report


def run(tmp_path: Path, boards: list[str], ship: DeployFn, extra: str = "", **kw: Any) -> Any:
    return run_lab(load_lab(lab_file(tmp_path, boards, extra)), history_url=f"sqlite:///{tmp_path / 'history.sqlite'}", deploy_fn=ship, **kw)


def test_retried_infrastructure_failure_passes_after_retries_and_reports_validate(tmp_path: Path, monkeypatch: Any) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("CI_JOB_ID", "777")
    ship = FakeShip({"a": 50.0, "b": 5.0, "c": 40.0}, fail_first={"c": 2})
    result = run(tmp_path, ["a", "b", "c"], ship)
    rows = {b["name"]: b for b in result.doc["boards"]}
    assert rows["a"]["status"] == "passed" and rows["a"]["retries"] == 0
    assert rows["c"]["passed"] and rows["c"]["status"] == "passed after 2 retries" and ship.calls["c"] == 3
    assert rows["b"]["failure_class"] == "result" and not rows["b"]["passed"]
    assert result.exit_code == EXIT_VALIDATION and result.doc["counts"] == {"boards": 3, "passed": 2, "infrastructure": 0, "configuration": 0, "result": 1}
    checks = {c["name"]: c["outcome"] for c in rows["b"]["checks"]}
    assert checks["meets the decode budget"] == "failed" and checks["reachable"] == checks["fits memory"] == "passed"
    assert rows["a"]["gguf_sha256"] == SHA and rows["a"]["llama_cpp_version"] == "0.3.36" and rows["a"]["fingerprint"] is None
    assert result.doc["ci"]["job_id"] == "777"
    # every report is there and valid
    d = result.run_dir
    jsonschema.validate(json.loads((d / "report.json").read_text()), json.loads(REPORT_SCHEMA.read_text()), format_checker=jsonschema.FormatChecker())
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(d / "junit.xml"))
    assert (d / "report.html").read_text().count('src="data:image/png;base64,') == 4
    assert "passed after 2 retries" in (d / "summary.md").read_text() and summary.read_text() == (d / "summary.md").read_text() + "\n"
    assert (d / "boards" / "c" / "pipeline.log").exists()


def test_hung_stage_times_out_without_holding_up_the_lab(tmp_path: Path) -> None:
    ship = FakeShip({"fast": 50.0, "stuck": 50.0}, hang={"stuck": 6.0})
    t0 = time.monotonic()
    result = run(tmp_path, ["fast", "stuck"], ship, extra="timeouts: {stages: {run: 1s}}")
    assert time.monotonic() - t0 < 5.5  # the watchdog did not wait for the hung board
    rows = {b["name"]: b for b in result.doc["boards"]}
    assert rows["fast"]["passed"]
    stuck = rows["stuck"]
    assert stuck["timed_out"] and stuck["failure_class"] == "infrastructure" and result.exit_code == EXIT_TARGET
    assert "stage run ran past its timeout (1s)" in stuck["error"] and "timeouts.stages.run" in stuck["hint"]
    assert ship.calls["stuck"] == 1  # a timeout is not retried into the same hang


def test_decode_regression_against_history_fails_the_run(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'history.sqlite'}"
    t0 = datetime.now(UTC) - timedelta(days=5)
    with History(db) as h:  # quiet board at ~50 tok/s; noisy board wobbling between 30 and 70
        for i, (quiet, noisy) in enumerate([(50.0, 30.0), (50.4, 70.0), (49.6, 45.0), (50.0, 60.0)]):
            at = t0 + timedelta(days=i)
            h.record(RunRecord("unit", "x", at, at, "0", 0, True),
                     [BoardRecord(name, at, True, 0, model="smollm2-135m-instruct", quant="Q4_1", decode_tokens_per_s=v)
                      for name, v in (("quiet", quiet), ("noisy", noisy))])
    result = run(tmp_path, ["quiet", "noisy"], FakeShip({"quiet": 45.0, "noisy": 40.0}))
    rows = {b["name"]: b for b in result.doc["boards"]}
    q, n = rows["quiet"], rows["noisy"]
    assert not q["passed"] and q["failure_class"] == "result" and q["regression"]["regressed"] and "decode regression" in q["error"]
    assert n["passed"] and not n["regression"]["regressed"]  # a 20 % drop is inside this board's noise
    assert {c["name"]: c["outcome"] for c in q["checks"]}["no decode regression"] == "failed"
    assert result.exit_code == EXIT_VALIDATION
    with History(db) as h:
        latest = h.results(board="quiet")[-1]
    assert latest.regression and not latest.passed and latest.decode_tokens_per_s == 45.0


def test_two_lab_runs_on_one_board_take_turns(tmp_path: Path) -> None:
    """Lock contention through LocalTransport (the SSH version is in test_lab_e2e)."""
    ship = FakeShip({"shared": 50.0}, hang={"shared": 1.5})
    lab = load_lab(lab_file(tmp_path, ["shared"]))
    results: list[Any] = []

    def one() -> None:
        results.append(run_lab(lab, history_url=f"sqlite:///{tmp_path / 'history.sqlite'}", deploy_fn=ship))

    runs = [threading.Thread(target=one) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(60)
    assert len(results) == 2 and all(r.exit_code == 0 for r in results)
    locks = sorted((r.doc["boards"][0]["lock"] for r in results), key=lambda x: x["waited_s"])
    assert locks[0]["waited_s"] < 1.0 and locks[1]["waited_s"] >= 1.0  # the second waited for the first to finish
    assert locks[1]["waited_for"] and "lab unit" in locks[1]["waited_for"]


def test_cli_lab_run_probe_only_and_history_report(tmp_path: Path, cli_env: dict[str, str]) -> None:
    lab = lab_file(tmp_path, ["here"])
    proc = subprocess.run(["edgedeploy", "lab", "run", str(lab), "--probe-only", "--quick", "--out", str(tmp_path / "out"), "--json"],
                          env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "probe-only" and doc["boards"][0]["passed"] and doc["boards"][0]["fingerprint"]
    assert "here: passed" in proc.stderr and str(tmp_path / "out") in doc["run_dir"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("boards: {x: {target: local, timeouts: {stages: {run: 3h}}}}\n")
    proc = subprocess.run(["edgedeploy", "lab", "run", str(bad)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"error: {bad}: boards.x.timeouts.stages.run is 3h" in proc.stderr and "hint:" in proc.stderr
    # the history, read back as a user would
    db = f"sqlite:///{tmp_path / 'h.sqlite'}"
    now = datetime.now(UTC)
    with History(db) as h:
        h.record(RunRecord("unit", "x", now, now, "0", 0, True), [BoardRecord("pi", now, True, 0, model="m", quant="q", decode_tokens_per_s=9.5)])
    proc = subprocess.run(["edgedeploy", "report", "--history", "--history-url", db, "--since", "2000-01-01"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| pi | 1 | 1 | 0 |" in proc.stdout and "9.50" in proc.stdout
    proc = subprocess.run(["edgedeploy", "report", "--history", "--history-url", db, "--board", "pi", "--json"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["decode_tokens_per_s"] == 9.5


class HubDown(FakeShip):
    """The model hub does not answer on a board's first attempt (the package stage fetches the GGUF)."""

    def __init__(self) -> None:
        super().__init__({"a": 50.0})
        self.seen: list[tuple[bool | None, bool]] = []

    def __call__(self, transport: Transport, request: DeployRequest, events: Events, run_dir: Path) -> Report:
        self.seen.append((request.plan.offline, request.options.offline_wheels))
        if len(self.seen) == 1:
            events.stage("package")
            raise ServiceUnreachable("cannot download Qwen/x/q.gguf: LocalEntryNotFoundError: no connection", "check access")
        return super().__call__(transport, request, events, run_dir)


def test_an_unreachable_hub_is_infrastructure_retried_and_offline_reaches_plan_and_provisioning(tmp_path: Path) -> None:
    ship = HubDown()
    result = run(tmp_path, ["a"], ship)
    row = result.doc["boards"][0]
    assert row["passed"] and row["status"] == "passed after 1 retry" and len(ship.seen) == 2
    assert ship.seen[0] == (None, False)  # not offline: the target's default, and the package index may be used
    ship = HubDown()
    result = run(tmp_path, ["a"], ship, extra="offline: true")
    assert ship.seen[0] == (True, True)  # plan only what is obtainable here; provision only from the wheelhouse
    lab = load_lab(lab_file(tmp_path, ["a", "b"])).offline_only()  # what `lab run --offline` does
    assert lab.offline and all(b.request.offline is True for b in lab.boards)
