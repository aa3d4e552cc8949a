"""One lab job end to end: run the boards, judge them against their history, store the run,
write the reports (report.json, junit.xml, report.html, summary.md) into the lab's run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from toolchain import __version__
from toolchain.core.errors import EXIT_VALIDATION
from toolchain.fleet import plots
from toolchain.fleet.classify import FailureClass, lab_exit_code
from toolchain.fleet.document import BoardRow, HistoryRef, LabDocument, lab_document, latencies_ms, load_facts
from toolchain.fleet.html import render_html
from toolchain.fleet.inventory import Lab
from toolchain.fleet.live import LiveView
from toolchain.fleet.locks import ci_job
from toolchain.fleet.regression import check_regression
from toolchain.fleet.scheduler import BoardOutcome, DeployFn, LabRunner
from toolchain.fleet.summary import publish_step_summary, render_summary
from toolchain.plan.calibration import fingerprint
from toolchain.store.history import History
from toolchain.store.records import BoardRecord, RunRecord, default_url
from toolchain.verdict.junit import Case, Suite, write_junit
from toolchain.verdict.report import new_run_dir

LAB_FILES = ("report.json", "junit.xml", "report.html", "summary.md")
DEFAULT_PARALLEL = 16


@dataclass
class LabRun:
    doc: LabDocument
    exit_code: int
    run_dir: Path
    outcomes: list[BoardOutcome]


def run_lab(lab: Lab, *, labels: list[str] | None = None, parallel: int | None = None, history_url: str | None = None,
            probe_only: bool = False, console: Console | None = None, deploy_fn: DeployFn | None = None) -> LabRun:
    boards = lab.select(labels)
    # Measurements go to the history; a probe-only health check has none. Opened first: a
    # database that cannot be reached fails the job before any board is touched.
    history = None if probe_only else History(history_url or lab.history or default_url())
    try:
        run_dir = new_run_dir(f"lab-{lab.name}")
        started = datetime.now(UTC)
        n = max(1, min(parallel or DEFAULT_PARALLEL, len(boards)))
        runner = LabRunner(lab, boards, parallel=n, run_dir=run_dir, probe_only=probe_only, deploy_fn=deploy_fn)
        if console is not None:
            runner.view = LiveView(console, f"lab {lab.name}: {len(boards)} board(s), {n} at a time ({'probe only' if probe_only else 'full run'})")
            with runner.view:
                outcomes = runner.run()
        else:
            outcomes = runner.run()
        finished = datetime.now(UTC)
        if history is not None:
            _judge_regressions(history, outcomes)
        exit_code = lab_exit_code([o.exit_code for o in outcomes])
        hist_doc: HistoryRef | None = None
        trend: list[plots.TrendPoint] = []
        if history is not None:
            run_id = history.record(_run_record(lab, started, finished, exit_code, run_dir), [_board_record(o) for o in outcomes])
            hist_doc = {"url": history.display, "run_id": run_id}
            trend = [plots.TrendPoint(r.board, r.measured_at, r.decode_tokens_per_s, r.passed, r.regression)
                     for r in history.results(boards=[b.name for b in boards]) if r.decode_tokens_per_s]
    finally:
        if history is not None:
            history.close()
    doc = lab_document(lab, boards, outcomes, started_at=started, finished_at=finished, exit_code=exit_code, run_dir=run_dir,
                       probe_only=probe_only, history=hist_doc)
    write_lab_reports(run_dir, doc, outcomes, trend)
    return LabRun(doc, exit_code, run_dir, outcomes)


def write_lab_reports(run_dir: Path, doc: LabDocument, outcomes: list[BoardOutcome], trend: list[plots.TrendPoint]) -> None:
    (run_dir / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    write_junit(run_dir / "junit.xml", lab_suites(doc), name=f"edgedeploy lab {doc['lab']['name']}", duration_s=doc["duration_s"])
    by_name = {o.name: o for o in outcomes}
    series = [_series(row, by_name[row["name"]]) for row in doc["boards"]]
    (run_dir / "report.html").write_text(render_html(doc, series, trend, run_dir))
    summary = render_summary(doc)
    (run_dir / "summary.md").write_text(summary)
    publish_step_summary(summary)


def lab_suites(doc: LabDocument) -> list[Suite]:
    """One JUnit suite per board, its lab checks as cases, its identity as properties."""
    suites = []
    for b in doc["boards"]:
        identity: dict[str, object] = {
            "target": b["target"], "status": b["status"], "failure_class": b["failure_class"], "retries": b["retries"],
            "fingerprint": b["fingerprint"], "model": b["model"], "quant": b["quant"], "gguf_sha256": b["gguf_sha256"],
            "llama_cpp_version": b["llama_cpp_version"], "run_dir": b["run_dir"],
        }
        props = {k: str(v) for k, v in identity.items() if v is not None}
        props |= {"labels": ",".join(b["labels"]), "edgedeploy_version": doc["edgedeploy_version"]}
        cases = [Case(c["name"], c["outcome"], c["message"], c["detail"]) for c in b["checks"]]
        suites.append(Suite(b["name"], f"edgedeploy.lab.{b['name']}", cases, duration_s=b["duration_s"], timestamp=doc["started_at"],
                            properties=props, failure_type=b["failure_class"] or "result",
                            system_out=f"{b['name']}: {b['status']}" + (f"\n{b['error']}" if b["error"] else "")))
    return suites


def _judge_regressions(history: History, outcomes: list[BoardOutcome]) -> None:
    """A passing board whose decode speed fell by more than its noise fails as a result."""
    for o in outcomes:
        tel = o.report.telemetry if o.report else None
        sel = o.report.plan.selected if o.report and o.report.plan else None
        if not o.passed or tel is None or not tel.decode_tokens_per_s:
            continue
        check = check_regression(float(tel.decode_tokens_per_s), history.baseline(o.name, sel.model if sel else None, sel.quant if sel else None))
        o.regression = check
        if check is not None and check.regressed:
            o.passed, o.failure, o.exit_code = False, FailureClass.RESULT, EXIT_VALIDATION
            o.error = f"{o.name}: decode regression: {check.describe()}"
            o.hint = "compare the board's report with an earlier run (edgedeploy report --history --board " + o.name + ")"


def _run_record(lab: Lab, started: datetime, finished: datetime, exit_code: int, run_dir: Path) -> RunRecord:
    return RunRecord(lab=lab.name, source=str(lab.source), started_at=started, finished_at=finished, edgedeploy_version=__version__,
                     exit_code=exit_code, passed=exit_code == 0, ci_job=ci_job()[0], run_dir=str(run_dir))


def _board_record(o: BoardOutcome) -> BoardRecord:
    r = o.report
    tel = r.telemetry if r else None
    plan = r.plan if r else None
    sel = plan.selected if plan else None
    facts = load_facts(o.run_dir)
    return BoardRecord(
        board=o.name, measured_at=o.started_at, passed=o.passed, exit_code=o.exit_code, labels=o.labels, target=o.target,
        failure_class=o.failure.value if o.failure else None, retries=o.retries, model=sel.model if sel else None,
        quant=sel.quant if sel else None,
        gguf_sha256=(r.release.model_sha256 if r and r.release else None) or (tel.model_sha256 if tel else None),
        llama_cpp=tel.llama_cpp if tel else None, fingerprint=fingerprint(facts) if facts else None,
        decode_tokens_per_s=tel.decode_tokens_per_s if tel else None,
        predicted_decode_tokens_per_s=sel.predicted.decode_tokens_per_s if sel else None,
        decode_ms_p50=tel.decode_ms_p50 if tel else None, ttft_ms=tel.ttft_s * 1000.0 if tel else None,
        peak_rss_bytes=tel.peak_rss_bytes or None if tel else None,
        temperature_before_c=tel.temperature_before_c if tel else None, temperature_after_c=tel.temperature_after_c if tel else None,
        budget_ms=plan.budget.decode_ms_per_token if plan else None, regression=bool(o.regression and o.regression.regressed), run_dir=o.run_dir,
    )


def _series(row: BoardRow, o: BoardOutcome) -> plots.BoardSeries:
    run = next((s for s in row["stages"] if s["name"] == "run"), None)
    budget_ms = row["budget"]["decode_ms_per_token"]
    measured, predicted = row["measured"], row["predicted"]
    return plots.BoardSeries(
        name=row["name"], passed=row["passed"], measured_tps=measured["decode_tokens_per_s"] if measured else None,
        predicted_tps=predicted["decode_tokens_per_s"] if predicted else None,
        budget_tps=1000.0 / budget_ms if budget_ms else None, latencies_ms=latencies_ms(o),
        temp_before_c=measured["temperature_before_c"] if measured else None, temp_after_c=measured["temperature_after_c"] if measured else None,
        run_s=run["duration_s"] if run else None,
    )
