"""The lab report's plots, drawn by matplotlib into PNG bytes (embedded in the HTML as data URIs).

Figure objects directly, not pyplot: no global figure state, so plotting is safe beside threads
and never needs a display.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from matplotlib.figure import Figure

PASS, FAIL, PRED, BUDGET = "#2e7d32", "#c62828", "#9e9e9e", "#ef6c00"


@dataclass(frozen=True)
class BoardSeries:
    """What the plots need of one board in this run."""

    name: str
    passed: bool
    measured_tps: float | None
    predicted_tps: float | None
    budget_tps: float | None
    latencies_ms: Sequence[float]
    temp_before_c: float | None
    temp_after_c: float | None
    run_s: float | None  # how long the run stage took (x axis of the temperature plot)


@dataclass(frozen=True)
class TrendPoint:
    board: str
    at: datetime
    decode_tps: float
    passed: bool
    regression: bool


def _days(at: datetime) -> float:
    """matplotlib's date axis unit: days since its default epoch, 1970-01-01 UTC."""
    return at.timestamp() / 86400.0


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _empty(fig: Figure, title: str, why: str) -> bytes:
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_axis_off()
    return _png(fig)


def _axis_limit(values: list[float]) -> float:
    """Axis end: the data with headroom; a budget far outside it must not squash the data to a line."""
    return 1.15 * max(values) if values else 1.0


def _marker(ax: Any, x: float, y: float, limit: float, label: str) -> None:
    """A budget tick at x on row y, or, beyond the axis, a note at its edge."""
    if x <= limit:
        ax.plot([x, x], [y - 0.45, y + 0.45], color=BUDGET, linewidth=2)
    else:
        ax.annotate(f"{label} ▸", (limit, y), xytext=(-4, 0), textcoords="offset points", ha="right", va="center", fontsize=8, color=BUDGET)


def _height(n: int) -> float:
    return max(2.4, 0.55 * n + 1.4)


def predicted_vs_measured(boards: Sequence[BoardSeries]) -> bytes:
    """Horizontal bars per board: measured decode tok/s (coloured by pass/fail) over predicted, budget marked."""
    fig = Figure(figsize=(8, _height(len(boards))))
    title = "Decode speed: measured vs predicted"
    if not any(b.measured_tps or b.predicted_tps for b in boards):
        return _empty(fig, title, "no board ran the model")
    ax = fig.add_subplot()
    ys = range(len(boards))
    ax.barh([y + 0.2 for y in ys], [b.predicted_tps or 0 for b in boards], height=0.38, color=PRED, label="predicted")
    ax.barh([y - 0.2 for y in ys], [b.measured_tps or 0 for b in boards], height=0.38,
            color=[PASS if b.passed else FAIL for b in boards], label="measured")
    limit = _axis_limit([x for b in boards for x in (b.measured_tps, b.predicted_tps) if x])
    for y, b in zip(ys, boards, strict=True):
        if b.budget_tps:
            _marker(ax, b.budget_tps, y, limit, f"budget {b.budget_tps:g} tok/s")
        if b.measured_tps is None:
            ax.text(0, y - 0.2, "  not measured", va="center", fontsize=8, color="#555555")
    ax.set_xlim(0, limit)
    ax.plot([], [], color=BUDGET, linewidth=2, label="budget (min tok/s)")
    ax.set_yticks(list(ys), [b.name for b in boards])
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s (higher is better)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def latency_distributions(boards: Sequence[BoardSeries]) -> bytes:
    """Box plot of per-token decode latency per board, budget marked."""
    fig = Figure(figsize=(8, _height(len(boards))))
    title = "Per-token decode latency"
    with_data = [b for b in boards if b.latencies_ms]
    if not with_data:
        return _empty(fig, title, "no per-token latencies measured")
    ax = fig.add_subplot()
    bp = ax.boxplot([list(b.latencies_ms) for b in with_data], orientation="horizontal", patch_artist=True, showfliers=True,
                    flierprops={"markersize": 2, "alpha": 0.5})
    for patch, b in zip(bp["boxes"], with_data, strict=True):
        patch.set_facecolor(PASS if b.passed else FAIL)
        patch.set_alpha(0.6)
    limit = _axis_limit([max(b.latencies_ms) for b in with_data])
    for y, b in enumerate(with_data, start=1):
        if b.budget_tps:
            ms = 1000.0 / b.budget_tps
            _marker(ax, ms, y, limit, f"budget {ms:g} ms")
    ax.set_xlim(0, limit)
    ax.plot([], [], color=BUDGET, linewidth=2, label="budget")
    ax.set_yticks(range(1, len(with_data) + 1), [b.name for b in with_data])
    ax.invert_yaxis()
    ax.set_xlabel("ms per token (lower is better)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def temperatures(boards: Sequence[BoardSeries]) -> bytes:
    """Hottest sensor at the start and the end of each board's run."""
    fig = Figure(figsize=(8, 3.2))
    title = "Temperature over the run (hottest sensor)"
    with_data = [b for b in boards if b.temp_before_c is not None or b.temp_after_c is not None]
    if not with_data:
        return _empty(fig, title, "no board reported a temperature sensor")
    ax = fig.add_subplot()
    for b in with_data:
        end = b.run_s or 1.0
        xs = [x for x, t in ((0.0, b.temp_before_c), (end, b.temp_after_c)) if t is not None]
        ts = [t for t in (b.temp_before_c, b.temp_after_c) if t is not None]
        ax.plot(xs, ts, marker="o", label=b.name)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("°C")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    return _png(fig)


def trends(points: Sequence[TrendPoint]) -> bytes:
    """Decode tok/s per board over its history; failed runs hollow, regressions in red."""
    fig = Figure(figsize=(8, 3.6))
    title = "Decode speed over time (history)"
    if not points:
        return _empty(fig, title, "no history yet")
    ax = fig.add_subplot()
    for board in sorted({p.board for p in points}):
        mine = [p for p in points if p.board == board]
        line = ax.plot([_days(p.at) for p in mine], [p.decode_tps for p in mine], marker="o", markersize=4, label=board)[0]
        bad = [p for p in mine if not p.passed]
        if bad:
            ax.scatter([_days(p.at) for p in bad], [p.decode_tps for p in bad], s=40, facecolors="none", edgecolors=line.get_color())
        reg = [p for p in mine if p.regression]
        if reg:
            ax.scatter([_days(p.at) for p in reg], [p.decode_tps for p in reg], s=70, marker="v", color=FAIL, zorder=3)
    if any(p.regression for p in points):
        ax.scatter([], [], s=70, marker="v", color=FAIL, label="regression")
    days = [_days(p.at) for p in points]
    if max(days) - min(days) < 1.0:  # one run (or one day): without this the date axis spans years
        ax.set_xlim(min(days) - 0.5, max(days) + 0.5)
    ax.xaxis_date()
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)
