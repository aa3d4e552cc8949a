"""One lab job end to end: run the boards, judge them against their history, store the run,
write the reports (report.json, junit.xml, report.html, summary.md) into the lab's run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from toolchain import __version__
from toolchain.core.errors import EXIT_VALIDATION
from toolchain.fleet import plots
from toolchain.fleet.classify import FailureClass, lab_exit_code
from toolchain.fleet.document import lab_document, latencies_ms, load_facts
from toolchain.fleet.html import render_html
from toolchain.fleet.inventory import Lab
from toolchain.fleet.junit import write_lab_junit
from toolchain.fleet.live import LiveView
from toolchain.fleet.locks import ci_job
from toolchain.fleet.regression import check_regression
from toolchain.fleet.scheduler import BoardOutcome, LabRunner, ShipFn
from toolchain.fleet.summary import publish_step_summary, render_summary
from toolchain.plan.calibration import fingerprint
from toolchain.store.history import BoardRecord, History, RunRecord, default_url
from toolchain.verdict.report import new_run_dir

LAB_FILES = ("report.json", "junit.xml", "report.html", "summary.md")
DEFAULT_PARALLEL = 16


@dataclass
class LabRun:
    doc: dict[str, Any]
    exit_code: int
    run_dir: Path
    outcomes: list[BoardOutcome]


def run_lab(lab: Lab, *, labels: list[str] | None = None, parallel: int | None = None, history_url: str | None = None,
            probe_only: bool = False, console: Console | None = None, ship_fn: ShipFn | None = None) -> LabRun:
    boards = lab.select(labels)
    # Measurements go to the history; a probe-only health check has none. Opened first: a
    # database that cannot be reached fails the job before any board is touched.
    history = None if probe_only else History(history_url or lab.history or default_url())
    try:
        run_dir = new_run_dir(f"lab-{lab.name}")
        started = datetime.now(UTC)
        n = max(1, min(parallel or DEFAULT_PARALLEL, len(boards)))
        runner = LabRunner(lab, boards, parallel=n, run_dir=run_dir, probe_only=probe_only, ship_fn=ship_fn)
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
        hist_doc = None
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


def write_lab_reports(run_dir: Path, doc: dict[str, Any], outcomes: list[BoardOutcome], trend: list[plots.TrendPoint]) -> None:
    (run_dir / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    write_lab_junit(run_dir / "junit.xml", doc)
    by_name = {o.name: o for o in outcomes}
    series = [_series(row, by_name[row["name"]]) for row in doc["boards"]]
    (run_dir / "report.html").write_text(render_html(doc, series, trend, run_dir))
    summary = render_summary(doc)
    (run_dir / "summary.md").write_text(summary)
    publish_step_summary(summary)


def _judge_regressions(history: History, outcomes: list[BoardOutcome]) -> None:
    """A passing board whose decode speed fell by more than its noise fails as a result."""
    for o in outcomes:
        tel = (o.report or {}).get("telemetry")
        sel = ((o.report or {}).get("plan") or {}).get("selected") or {}
        if not o.passed or not tel or not tel.get("decode_tokens_per_s"):
            continue
        check = check_regression(float(tel["decode_tokens_per_s"]), history.baseline(o.name, sel.get("model"), sel.get("quant")))
        o.regression = check
        if check is not None and check.regressed:
            o.passed, o.failure, o.exit_code = False, FailureClass.RESULT, EXIT_VALIDATION
            o.error = f"{o.name}: decode regression: {check.describe()}"
            o.hint = "compare the board's report with an earlier run (edgedeploy report --history --board " + o.name + ")"


def _run_record(lab: Lab, started: datetime, finished: datetime, exit_code: int, run_dir: Path) -> RunRecord:
    return RunRecord(lab=lab.name, source=str(lab.source), started_at=started, finished_at=finished, edgedeploy_version=__version__,
                     exit_code=exit_code, passed=exit_code == 0, ci_job=ci_job()[0], run_dir=str(run_dir))


def _board_record(o: BoardOutcome) -> BoardRecord:
    r = o.report or {}
    tel = r.get("telemetry") or {}
    sel = (r.get("plan") or {}).get("selected") or {}
    budget = (r.get("plan") or {}).get("budget") or {}
    facts = load_facts(o.run_dir)

    def num(key: str, scale: float = 1.0) -> float | None:
        v = tel.get(key)
        return float(v) * scale if isinstance(v, (int, float)) else None

    return BoardRecord(
        board=o.name, measured_at=o.started_at, passed=o.passed, exit_code=o.exit_code, labels=o.labels, target=o.target,
        failure_class=o.failure.value if o.failure else None, retries=o.retries, model=sel.get("model"), quant=sel.get("quant"),
        gguf_sha256=(r.get("release") or {}).get("model_sha256") or tel.get("model_sha256"), llama_cpp=tel.get("llama_cpp"),
        fingerprint=fingerprint(facts) if facts else None, decode_tokens_per_s=num("decode_tokens_per_s"),
        predicted_decode_tokens_per_s=(sel.get("predicted") or {}).get("decode_tokens_per_s"), decode_ms_p50=num("decode_ms_p50"),
        ttft_ms=num("ttft_s", 1000.0),
        peak_rss_bytes=int(tel["peak_rss_bytes"]) if tel.get("peak_rss_bytes") else None,
        temperature_before_c=num("temperature_before_c"), temperature_after_c=num("temperature_after_c"),
        budget_ms=budget.get("decode_ms_per_token"), regression=bool(o.regression and o.regression.regressed), run_dir=o.run_dir,
    )


def _series(row: dict[str, Any], o: BoardOutcome) -> plots.BoardSeries:
    run = next((s for s in row["stages"] if s["name"] == "run"), None)
    budget_ms = row["budget"]["decode_ms_per_token"]
    measured, predicted = row["measured"] or {}, row["predicted"] or {}
    return plots.BoardSeries(
        name=row["name"], passed=row["passed"], measured_tps=measured.get("decode_tokens_per_s"), predicted_tps=predicted.get("decode_tokens_per_s"),
        budget_tps=1000.0 / budget_ms if budget_ms else None, latencies_ms=latencies_ms(o),
        temp_before_c=measured.get("temperature_before_c"), temp_after_c=measured.get("temperature_after_c"),
        run_s=run["duration_s"] if run else None,
    )
