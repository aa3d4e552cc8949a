"""The lab report as one JSON document (docs/lab-report.schema.json is its contract).

Everything a person or a dashboard needs to trust a number: the board's fingerprint, the GGUF's
sha256, the quant, the llama.cpp version and the edgedeploy version, next to what was measured,
what was predicted, the budget and each check.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

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


def lab_document(lab: Lab, boards: tuple[LabBoard, ...], outcomes: list[BoardOutcome], *, started_at: datetime, finished_at: datetime,
                 exit_code: int, run_dir: Path, probe_only: bool, history: dict[str, Any] | None) -> dict[str, Any]:
    by_name = {b.name: b for b in boards}
    rows = [board_row(o, by_name[o.name], probe_only) for o in outcomes]
    counts = {"boards": len(rows), "passed": sum(1 for r in rows if r["passed"])}
    counts |= {c.value: sum(1 for r in rows if r["failure_class"] == c.value) for c in FailureClass if c is not FailureClass.INTERNAL}
    internal = sum(1 for r in rows if r["failure_class"] == FailureClass.INTERNAL.value)
    if internal:  # a bug in edgedeploy, counted apart from the boards' own failures (schema: optional)
        counts[FailureClass.INTERNAL.value] = internal
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


def board_row(o: BoardOutcome, board: LabBoard, probe_only: bool) -> dict[str, Any]:
    report = o.report
    facts = load_facts(o.run_dir)
    plan = report.plan if report else None
    sel = plan.selected if plan else None
    tel = report.telemetry if report else None
    release = report.release if report else None
    budget = plan.budget if plan else board.budget
    checks = board_checks(o, ttft_budget=budget.ttft_ms is not None, probe_only=probe_only)
    pred = sel.predicted if sel else None
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
        "checks": [asdict(c) for c in checks],
        "regression": None if o.regression is None else {**asdict(o.regression), "drop": round(o.regression.drop, 4)},
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
