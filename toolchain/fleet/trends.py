"""`edgedeploy report --history`: per-board trends and one board's runs, from history records (pure)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

from toolchain.core.errors import BadInputError
from toolchain.fleet.regression import BASELINE_RUNS
from toolchain.store.records import BoardRecord


def parse_since(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise BadInputError(f"--since {text!r} is not a date", "use YYYY-MM-DD or an ISO time such as 2025-06-01T12:00") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def board_trends(records: list[BoardRecord]) -> list[dict[str, object]]:
    """One row per board: its runs, the latest decode speed against the mean of the runs before it."""
    rows: list[dict[str, object]] = []
    for board in sorted({r.board for r in records}):
        mine = [r for r in records if r.board == board]
        last = mine[-1]
        measured = [r for r in mine if r.decode_tokens_per_s]
        before = [float(r.decode_tokens_per_s) for r in measured[:-1] if r.passed and r.decode_tokens_per_s][-BASELINE_RUNS:]
        latest = measured[-1].decode_tokens_per_s if measured else None
        mean = statistics.fmean(before) if before else None
        rows.append({
            "board": board, "runs": len(mine), "passed": sum(1 for r in mine if r.passed),
            "regressions": sum(1 for r in mine if r.regression), "last_at": last.measured_at.isoformat(timespec="seconds"),
            "last_status": "passed" if last.passed else f"{last.failure_class or 'failed'} failure",
            "model": last.model, "quant": last.quant, "latest_decode_tokens_per_s": latest,
            "baseline_decode_tokens_per_s": mean,
            "baseline_stdev": statistics.stdev(before) if len(before) >= 2 else None,
            "change": (latest - mean) / mean if latest is not None and mean else None,
        })
    return rows


def trends_markdown(rows: list[dict[str, object]], where: str) -> str:
    lines = [f"# Lab history ({where})", "",
             "| board | runs | passed | regressions | last run | last status | model | latest tok/s | before (mean ± sd) | change |",
             "|---|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        base = r["baseline_decode_tokens_per_s"]
        sd = r["baseline_stdev"]
        lines.append(f"| {r['board']} | {r['runs']} | {r['passed']} | {r['regressions']} | {r['last_at']} | {r['last_status']} | "
                     f"{r['model'] or '–'} {r['quant'] or ''} | {_num(r['latest_decode_tokens_per_s'])} | "
                     f"{_num(base)}{f' ± {_num(sd)}' if sd is not None else ''} | {_pct(r['change'])} |")
    if not rows:
        lines.append("| (no runs) | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def runs_markdown(records: list[BoardRecord], board: str, where: str) -> str:
    lines = [f"# Lab history of {board} ({where})", "",
             "| when | status | retries | model | decode tok/s | predicted | TTFT ms | peak RSS MiB | regression |",
             "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for r in records:
        status = "passed" if r.passed else f"{r.failure_class or 'failed'} failure"
        rss = f"{r.peak_rss_bytes / 2**20:.0f}" if r.peak_rss_bytes else "–"
        lines.append(f"| {r.measured_at.isoformat(timespec='seconds')} | {status} | {r.retries} | {r.model or '–'} {r.quant or ''} | "
                     f"{_num(r.decode_tokens_per_s)} | {_num(r.predicted_decode_tokens_per_s)} | {_num(r.ttft_ms, 1)} | {rss} | "
                     f"{'**yes**' if r.regression else ''} |")
    if not records:
        lines.append("| (no runs) | | | | | | | | |")
    return "\n".join(lines) + "\n"


def _num(v: object, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def _pct(v: object) -> str:
    return f"{v:+.1%}" if isinstance(v, (int, float)) else "–"
