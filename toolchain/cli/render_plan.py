"""Human views of a plan, a ship report and validation checks (stderr tables)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from toolchain.cli import console as ui
from toolchain.core.nouns import Candidate, Check, Plan
from toolchain.core.units import fmt_bytes, fmt_rate

if TYPE_CHECKING:
    from toolchain.verdict.report import Report


CONFIDENCE = {
    "class defaults": "class defaults for a device never measured: a guess (ship calibrates it first; "
                      "`probe --calibrate` does it alone)",
    "calibrated": "this device's own first-contact calibration (and any runs shipped since)",
    "measured": "this device's shipped runs",
}


def render_plan(plan: Plan, every: bool = False) -> None:
    b = plan.basis
    ui.err.print(f"basis: usable memory {fmt_bytes(b.usable_memory_bytes)}; bandwidth {fmt_rate(b.bandwidth_bytes_per_s)} "
                 f"({b.bandwidth_source}); efficiency {b.efficiency:.2f} ({b.efficiency_source}); budget {plan.budget.decode_ms_per_token:g} ms/token",
                 markup=False)
    rows = plan.candidates if every else per_model(plan.candidates)
    t = Table(show_lines=False)
    for col in ("model", "quant", "size", "fits", "ms/token", "tok/s", "memory", "why not"):
        t.add_column(col)
    for c in sorted(rows, key=lambda c: (c.params, c.file_bytes), reverse=True):
        p = c.predicted
        t.add_row(c.model, c.quant + ("*" if c.file_bytes_estimated else "") + (" ✓" if c.available else ""),
                  fmt_bytes(c.file_bytes), "yes" if c.fits else "no",
                  f"{p.decode_ms_per_token:.1f}" if p else "-", f"{p.decode_tokens_per_s:.1f}" if p else "-",
                  fmt_bytes(p.peak_memory_bytes) if p else "-", "; ".join(r for r in c.reasons if not (c.fits and r.startswith("needs"))))
    ui.err.print(t)
    if not every:
        fitting = sum(c.fits for c in plan.candidates)
        ui.err.print(f"one row per model: its largest quant that fits, else its smallest; {fitting} of "
                     f"{len(plan.candidates)} candidates fit (--all lists every one)", markup=False)
    ui.err.print("* size estimated from the tensor table recipe   ✓ available offline now", markup=False)
    s = plan.selected
    if s:
        p = s.predicted
        interval = f", {p.decode_tokens_per_s_low:.1f}-{p.decode_tokens_per_s_high:.1f} expected" if p.decode_tokens_per_s_low else ""
        ui.err.print(f"selected: {s.model} {s.quant} ({s.mode}), ctx {s.ctx}, KV {s.kv_type}, {s.threads} threads: predicted "
                     f"{p.decode_ms_per_token:.1f} ms/token ({p.decode_tokens_per_s:.1f} tok/s{interval}), "
                     f"peak {fmt_bytes(p.peak_memory_bytes)}", markup=False)
        ui.err.print(f"  speed basis: {CONFIDENCE.get(b.confidence, b.confidence)}", markup=False)
        for n in s.notes:
            ui.err.print(f"  note: {n}", markup=False)


def per_model(candidates: list[Candidate]) -> list[Candidate]:
    """Each model's largest fitting quant (the one the planner would take for it), else its smallest
    (the nearest to fitting): a screen of rows where every quant of every model would be hundreds."""
    by_model: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_model.setdefault(c.model, []).append(c)
    rows = []
    for cs in by_model.values():
        fitting = [c for c in cs if c.fits]
        rows.append(max(fitting, key=lambda c: (c.file_bytes, c.mode == "resident")) if fitting
                    else min(cs, key=lambda c: c.file_bytes))
    return rows


def render_checks(checks: list[Check]) -> None:
    t = Table()
    for col in ("check", "result", "observed", "limit", "detail"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.name, "pass" if c.passed else ("FAIL" if c.severity == "error" else "warn"), str(c.observed), str(c.limit), c.detail)
    ui.err.print(t)


def render_ship(report: Report) -> None:
    render_checks(report.verdict.checks)
    for n in report.nodes:  # a split across boards: each board measured
        link = (f"; its link carried {n.link_rx_bytes / 1e6:.1f} MB in, {n.link_tx_bytes / 1e6:.2f} MB out"
                if n.role == "worker" else "")
        ui.err.print(f"{n.role} {n.target} ({n.endpoint}): {n.layer_count} layers, peak {n.peak_memory_bytes / 2**20:.0f} MiB "
                     f"(share {n.share_memory_bytes / 2**20:.0f}, usable {n.usable_memory_bytes / 2**20:.0f}){link}", markup=False)
    rel = report.release
    if rel:
        state = "activated" if rel.activated else "NOT activated (previous release stays current)"
        ui.err.print(f"release {rel.id}: {state}", markup=False)
    ui.err.print(f"{'PASSED' if report.verdict.passed else 'FAILED'}; run directory {report.run_dir}", markup=False)
