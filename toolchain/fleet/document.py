"""The lab report as one JSON document (docs/lab-report.schema.json is its contract).

Everything a person or a dashboard needs to trust a number: the board's fingerprint, the GGUF's
sha256, the quant, the llama.cpp version and the edgedeploy version, next to what was measured,
what was predicted, the budget and each check.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import NotRequired, TypedDict

from toolchain import __version__
from toolchain.core.nouns import HostFacts
from toolchain.core.serde import from_dict
from toolchain.fleet.checks import board_checks
from toolchain.fleet.classify import FailureClass
from toolchain.fleet.inventory import Lab, LabBoard
from toolchain.fleet.locks import ci_job
from toolchain.fleet.scheduler import BoardOutcome
from toolchain.plan import calibration

SCHEMA = "edgedeploy-lab-report/1"


# The document's shape, key for key as docs/lab-report.schema.json has it (add keys, never rename).


class LabRef(TypedDict):
    name: str
    source: str  # path of the lab file


class CiRef(TypedDict):
    job_id: str | None  # None outside CI
    job_url: str | None


class HistoryRef(TypedDict):
    """Where the run was stored."""

    url: str  # database URL, password hidden
    run_id: int


class Counts(TypedDict):
    boards: int
    passed: int
    infrastructure: int
    configuration: int
    result: int
    internal: NotRequired[int]  # only when a bug in edgedeploy stopped a board


class StageRow(TypedDict):
    name: str
    started_s: float
    duration_s: float | None


class LockRow(TypedDict):
    waited_s: float
    waited_for: str | None  # the job that held the board lock while this one waited
    took_over: str | None  # the expired lock this job replaced


class BudgetRow(TypedDict):
    decode_ms_per_token: float
    ttft_ms: float | None


class MeasuredRow(TypedDict):
    decode_tokens_per_s: float
    decode_ms_p50: float
    decode_ms_p90: float
    decode_ms_p99: float
    ttft_ms: float
    peak_rss_bytes: int
    temperature_before_c: float | None
    temperature_after_c: float | None


class PredictedRow(TypedDict):
    decode_tokens_per_s: float
    peak_memory_bytes: int


class CheckRow(TypedDict):
    """One lab check: one JUnit test case."""

    name: str
    outcome: str  # passed | failed | error | skipped | warning
    message: str
    detail: str


class RegressionRow(TypedDict):
    regressed: bool
    measured_tokens_per_s: float
    baseline_tokens_per_s: float
    stdev_tokens_per_s: float
    threshold_tokens_per_s: float
    runs: int
    drop: float


class BoardRow(TypedDict):
    name: str  # the board's key in the lab file
    labels: list[str]
    target: str
    passed: bool
    status: str
    failure_class: str | None
    exit_code: int
    error: str | None
    hint: str | None
    attempts: int
    retries: int
    timed_out: bool
    duration_s: float
    stages: list[StageRow]
    lock: LockRow
    fingerprint: str | None
    model: str | None
    quant: str | None
    gguf_sha256: str | None
    llama_cpp_version: str | None
    budget: BudgetRow
    measured: MeasuredRow | None
    predicted: PredictedRow | None
    checks: list[CheckRow]
    regression: RegressionRow | None  # None without an earlier passing run of this model and quant
    run_dir: str | None


class LabDocument(TypedDict):
    """report.json of a lab run directory."""

    schema: str
    lab: LabRef
    edgedeploy_version: str
    ci: CiRef
    mode: str  # full | probe-only
    started_at: str
    finished_at: str
    duration_s: float
    passed: bool
    exit_code: int
    run_dir: str
    history: HistoryRef | None  # None for probe-only runs
    counts: Counts
    boards: list[BoardRow]


def lab_document(lab: Lab, boards: tuple[LabBoard, ...], outcomes: list[BoardOutcome], *, started_at: datetime, finished_at: datetime,
                 exit_code: int, run_dir: Path, probe_only: bool, history: HistoryRef | None) -> LabDocument:
    by_name = {b.name: b for b in boards}
    rows = [board_row(o, by_name[o.name], probe_only) for o in outcomes]

    def failed(c: FailureClass) -> int:
        return sum(1 for r in rows if r["failure_class"] == c.value)

    counts: Counts = {"boards": len(rows), "passed": sum(1 for r in rows if r["passed"]), "infrastructure": failed(FailureClass.INFRASTRUCTURE),
                      "configuration": failed(FailureClass.CONFIGURATION), "result": failed(FailureClass.RESULT)}
    internal = failed(FailureClass.INTERNAL)
    if internal:  # a bug in edgedeploy, counted apart from the boards' own failures (schema: optional)
        counts["internal"] = internal
    job_id, job_url = ci_job()
    return {
        "schema": SCHEMA,
        "lab": {"name": lab.name, "source": str(lab.source)},
        "edgedeploy_version": __version__,
        "ci": {"job_id": job_id, "job_url": job_url},
        "mode": "probe-only" if probe_only else "full",
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "duration_s": round((finished_at - started_at).total_seconds(), 3),
        "passed": exit_code == 0,
        "exit_code": exit_code,
        "run_dir": str(run_dir),
        "history": history,
        "counts": counts,
        "boards": rows,
    }


def board_row(o: BoardOutcome, board: LabBoard, probe_only: bool) -> BoardRow:
    report = o.report
    facts = load_facts(o.run_dir)
    plan = report.plan if report else None
    sel = plan.selected if plan else None
    tel = report.telemetry if report else None
    release = report.release if report else None
    budget = plan.budget if plan else board.budget
    checks = board_checks(o, ttft_budget=budget.ttft_ms is not None, probe_only=probe_only)
    pred = sel.predicted if sel else None
    reg = o.regression
    return {
        "name": o.name,
        "labels": list(o.labels),
        "target": o.target,
        "passed": o.passed,
        "status": o.status,
        "failure_class": o.failure.value if o.failure else None,
        "exit_code": o.exit_code,
        "error": o.error,
        "hint": o.hint,
        "attempts": o.attempts,
        "retries": o.retries,
        "timed_out": o.timed_out,
        "duration_s": round(o.duration_s, 3),
        "stages": [{"name": s.name, "started_s": round(s.started_s, 3), "duration_s": None if s.duration_s is None else round(s.duration_s, 3)}
                   for s in o.stages],
        "lock": {"waited_s": round(o.lock_waited_s, 3), "waited_for": o.lock_waited_for, "took_over": o.lock_took_over},
        "fingerprint": calibration.fingerprint(facts) if facts else None,
        "model": sel.model if sel else None,
        "quant": sel.quant if sel else None,
        "gguf_sha256": (release.model_sha256 if release else None) or (tel.model_sha256 if tel else None),
        "llama_cpp_version": (tel.llama_cpp if tel else None) or (facts.runtime.llama_cpp if facts else None),
        "budget": {"decode_ms_per_token": budget.decode_ms_per_token, "ttft_ms": budget.ttft_ms},
        "measured": None if tel is None else {
            "decode_tokens_per_s": tel.decode_tokens_per_s, "decode_ms_p50": tel.decode_ms_p50,
            "decode_ms_p90": tel.decode_ms_p90, "decode_ms_p99": tel.decode_ms_p99,
            "ttft_ms": round(tel.ttft_s * 1000.0, 3), "peak_rss_bytes": tel.peak_rss_bytes,
            "temperature_before_c": tel.temperature_before_c, "temperature_after_c": tel.temperature_after_c,
        },
        "predicted": None if pred is None else {"decode_tokens_per_s": pred.decode_tokens_per_s, "peak_memory_bytes": pred.peak_memory_bytes},
        "checks": [{"name": c.name, "outcome": c.outcome, "message": c.message, "detail": c.detail} for c in checks],
        "regression": None if reg is None else {
            "regressed": reg.regressed, "measured_tokens_per_s": reg.measured_tokens_per_s, "baseline_tokens_per_s": reg.baseline_tokens_per_s,
            "stdev_tokens_per_s": reg.stdev_tokens_per_s, "threshold_tokens_per_s": reg.threshold_tokens_per_s, "runs": reg.runs,
            "drop": round(reg.drop, 4),
        },
        "run_dir": o.run_dir,
    }


def latencies_ms(o: BoardOutcome) -> list[float]:
    """Per-token decode latencies the runner measured (telemetry extra), for the plots."""
    tel = o.report.telemetry if o.report else None
    values = tel.extra.get("latencies_ms") or [] if tel else []
    return [float(x) for x in values if isinstance(x, (int, float))]


def load_facts(run_dir: str | None) -> HostFacts | None:
    if not run_dir:
        return None
    try:
        return from_dict(HostFacts, json.loads((Path(run_dir) / "facts.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
