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
    counts |= {c.value: sum(1 for r in rows if r["failure_class"] == c.value) for c in FailureClass}
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
    report = o.report or {}
    facts = load_facts(o.run_dir)
    plan = report.get("plan") or {}
    sel = plan.get("selected") or {}
    tel = report.get("telemetry") or None
    release = report.get("release") or {}
    budget = plan.get("budget") or {"decode_ms_per_token": board.budget.decode_ms_per_token, "ttft_ms": board.budget.ttft_ms}
    checks = board_checks(o, ttft_budget=budget.get("ttft_ms") is not None, probe_only=probe_only)
    pred = sel.get("predicted") or {}
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
        "model": sel.get("model"),
        "quant": sel.get("quant"),
        "gguf_sha256": release.get("model_sha256") or (tel or {}).get("model_sha256"),
        "llama_cpp_version": (tel or {}).get("llama_cpp") or (facts.runtime.llama_cpp if facts else None),
        "budget": {"decode_ms_per_token": budget.get("decode_ms_per_token"), "ttft_ms": budget.get("ttft_ms")},
        "measured": None if tel is None else {
            "decode_tokens_per_s": tel.get("decode_tokens_per_s"), "decode_ms_p50": tel.get("decode_ms_p50"),
            "decode_ms_p90": tel.get("decode_ms_p90"), "decode_ms_p99": tel.get("decode_ms_p99"),
            "ttft_ms": round(float(tel.get("ttft_s", 0.0)) * 1000.0, 3), "peak_rss_bytes": tel.get("peak_rss_bytes"),
            "temperature_before_c": tel.get("temperature_before_c"), "temperature_after_c": tel.get("temperature_after_c"),
        },
        "predicted": None if not pred else {"decode_tokens_per_s": pred.get("decode_tokens_per_s"), "peak_memory_bytes": pred.get("peak_memory_bytes")},
        "checks": [asdict(c) for c in checks],
        "regression": None if o.regression is None else {**asdict(o.regression), "drop": round(o.regression.drop, 4)},
        "run_dir": o.run_dir,
    }


def latencies_ms(o: BoardOutcome) -> list[float]:
    """Per-token decode latencies the runner measured (telemetry extra), for the plots."""
    tel = (o.report or {}).get("telemetry") or {}
    values = (tel.get("extra") or {}).get("latencies_ms") or []
    return [float(x) for x in values if isinstance(x, (int, float))]


def load_facts(run_dir: str | None) -> HostFacts | None:
    if not run_dir:
        return None
    try:
        return from_dict(HostFacts, json.loads((Path(run_dir) / "facts.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
