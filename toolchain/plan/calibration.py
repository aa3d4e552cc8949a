"""Every measurement on a device is stored; the next plan for that device is fitted to them.

Measurements (DeviceMeasurement) live in the one database of toolchain/store/history.py, keyed
by a device fingerprint: what the runner measured (decode seconds per token, peak RSS) beside
what the plan assumed (bytes per token, bandwidth, quant). fit_device turns a device's records
into its own decode efficiency, per-token overhead and per-quant-family factors, so the first
plan of a device uses the defaults and later plans converge on what it does (the defaults per
device class come from published measurements: plan/published.py). The JSON-lines file of
earlier versions (<data dir>/calibration.jsonl) is imported once, then renamed *.imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.nouns import HostFacts, Plan, Telemetry
from toolchain.core.paths import data_dir
from toolchain.store.records import DeviceMeasurement, default_url

if TYPE_CHECKING:
    from toolchain.store.history import History

__all__ = ["DeviceMeasurement", "correction", "fingerprint", "fit_device", "load", "record_run"]

MAX_RECORDS = 50  # per fingerprint: recent behaviour wins over old firmware/kernels
RIDGE = 0.01  # pull toward the defaults: a 100 % change of one eta costs what 10 % error on one record does


@dataclass(frozen=True)
class Correction:
    factor: float  # measured / predicted decode time, median
    records: int
    source: str


@dataclass(frozen=True)
class DeviceFit:
    """Fitted on one device's measurements: family_factors[t] x the default efficiency is the
    efficiency of ggml type t there, overhead_s the per-token overhead; eta_scale summarises."""

    eta_scale: float = 1.0
    overhead_s: float | None = None  # None: keep the default
    family_factors: dict[str, float] = field(default_factory=dict)
    memory_offset_bytes: int = 0  # median measured - predicted peak RSS
    records: int = 0
    source: str = "default (no measurements of this device yet)"
    per_layer_overhead_s: float | None = None  # None: keep the default (no record says its layer count)
    per_row_s: float | None = None  # None: keep the default (no records of different rows per byte)
    bandwidth_bytes_per_s: float = 0.0  # the read rate the records were fitted against (their median)
    calibrated: int = 0  # how many of the records come from the first-contact calibration
    spread: tuple[float, float] = (1.0, 1.0)  # 10th / 90th percentile of measured / fitted tok/s over the records


def fingerprint(facts: HostFacts) -> str:
    name = facts.board.model or facts.board.android_model or facts.cpu.model_name or "unknown"
    gib = round(facts.memory.total_bytes / (1 << 30))
    return f"{name}|{facts.cpu.arch}|{facts.cpu.cores}c|{gib}GiB"


# --- the store ----------------------------------------------------------------------------------


def load(fp: str, url: str | None = None) -> list[DeviceMeasurement]:
    """The device's newest MAX_RECORDS measurements, oldest first."""
    if not _database_exists(url or default_url()) and not legacy_path().exists():
        return []  # nothing measured yet: no need to load the database engine (a plan stays quick)
    with _open(url) as h:
        return h.measurements(fp, limit=MAX_RECORDS)


def record_run(facts: HostFacts, plan: Plan, telemetry: Telemetry, url: str | None = None) -> None:
    """Store what a shipped run measured against what its plan assumed."""
    if telemetry.decode_tokens_per_s <= 0:
        return  # no token decoded: nothing to fit
    with _open(url) as h:
        h.add_measurements([measurement(facts, plan, telemetry)])


def record_calibration(records: list[DeviceMeasurement], url: str | None = None) -> None:
    """Store a device's first-contact calibration, in place of any earlier one of it."""
    with _open(url) as h:
        h.add_measurements(records, replacing_origin="calibration")


def measurement(facts: HostFacts, plan: Plan, telemetry: Telemetry, at: datetime | None = None) -> DeviceMeasurement:
    """The record of a shipped run. Its predictions are put back on the uncorrected basis (class
    defaults, no device fit, no RSS offset): the plan's own were made with the fit of the earlier
    records, and a fit over corrected predictions would only see its own residuals."""
    from toolchain.plan.basis import uncorrected_decode_s  # basis imports this module

    sel = plan.selected
    assert sel is not None
    p = sel.predicted
    return DeviceMeasurement(
        fingerprint=fingerprint(facts), measured_at=at or datetime.now(UTC), model=sel.model, quant=sel.quant,
        threads=sel.threads, ctx=sel.ctx, predicted_decode_s=uncorrected_decode_s(plan.basis, p),
        measured_decode_s=1.0 / telemetry.decode_tokens_per_s, bytes_per_token=p.bytes_per_token,
        predicted_peak_bytes=(p.bench_rss_bytes or p.peak_memory_bytes) - plan.basis.memory_offset_bytes,
        measured_peak_bytes=telemetry.peak_rss_bytes, family=p.kernel_family, bytes_by_type=dict(p.bytes_by_type),
        bandwidth_bytes_per_s=plan.basis.bandwidth_bytes_per_s, n_layer=p.n_layer, rows_per_token=p.rows_per_token, origin="run",
    )


def legacy_path() -> Path:
    return data_dir() / "calibration.jsonl"


def _database_exists(url: str) -> bool:
    """False only for a SQLite file that is not there yet; any server may hold records."""
    if not url.startswith("sqlite:///"):
        return True
    path = url.removeprefix("sqlite:///")
    return path in ("", ":memory:") or "?" in path or Path(path).exists()


@contextlib.contextmanager
def _open(url: str | None) -> Iterator[History]:
    from toolchain.store.history import History  # SQLAlchemy loads in ~0.3 s: only when a database is used

    with History(url or default_url()) as h:
        import_legacy(h)
        yield h


def import_legacy(h: History, path: Path | None = None) -> int:
    """Move the JSON-lines records of earlier versions into the database, once (the file is then
    renamed *.imported); returns how many were imported."""
    path = path or legacy_path()
    if not path.exists():
        return 0
    with open(f"{path}.import-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes opening at once must not import it twice
        if not path.exists():
            return 0
        items = [m for m in (_from_legacy(line) for line in path.read_text().splitlines()) if m is not None]
        h.add_measurements(items)
        path.rename(path.with_name(path.name + ".imported"))
    Path(f"{path}.import-lock").unlink(missing_ok=True)
    return len(items)


def _from_legacy(line: str) -> DeviceMeasurement | None:
    try:
        r = json.loads(line)
        if not isinstance(r, dict) or not r.get("fingerprint"):
            return None
        # uncorrected: false marked a prediction the old planner had already scaled: not comparable
        pred = r.get("predicted_decode_s") if r.get("uncorrected", True) else None
        return DeviceMeasurement(
            fingerprint=str(r["fingerprint"]), measured_at=datetime.fromtimestamp(float(r.get("time", 0.0)), UTC),
            model=str(r.get("model", "")), quant=str(r.get("quant", "")), threads=int(r.get("threads") or 0),
            ctx=int(r.get("ctx") or 0), predicted_decode_s=float(pred) if pred else None,
            measured_decode_s=float(r["measured_decode_s"]), bytes_per_token=int(r.get("bytes_per_token") or 0),
            predicted_peak_bytes=_opt_int(r.get("predicted_peak_bytes")), measured_peak_bytes=_opt_int(r.get("measured_peak_bytes")),
            family=str(r.get("family") or ""), bytes_by_type={str(k): int(v) for k, v in (r.get("bytes_by_type") or {}).items()},
            bandwidth_bytes_per_s=float(r.get("bandwidth_bytes_per_s") or 0.0),
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None  # a torn or foreign line: the old reader skipped those too


def _opt_int(value: Any) -> int | None:
    return int(value) if value else None


# --- fitting (pure) -----------------------------------------------------------------------------


def correction(records: list[DeviceMeasurement]) -> Correction:
    """The median measured/predicted decode-time ratio against the uncorrected basis: how far
    this device is from its class defaults (kept for reports; plans use fit_device)."""
    ratios = [r.measured_decode_s / r.predicted_decode_s for r in records if r.predicted_decode_s and r.measured_decode_s]
    if not ratios:
        return Correction(1.0, 0, "default (no measurements of this device yet)")
    f = statistics.median(ratios)
    return Correction(f, len(ratios), f"fitted from {len(ratios)} measurement(s) on this device (x{f:.2f})")


def family_of(quant: str) -> str:
    """The kernel family of a file type name (Q4_K_M -> Q4_K)."""
    q = quant.upper()
    for suffix in ("_M", "_S", "_L"):
        if q.endswith(suffix) and q[:-2] in ("Q2_K", "Q3_K", "Q4_K", "Q5_K"):
            return q[:-2]
    return q


def fit_device(records: list[DeviceMeasurement], eta: float, overhead_s: float,
               quant_factors: dict[str, float] | None = None, ridge: float = RIDGE,
               per_layer_s: float = 0.0, per_row_s: float = 0.0) -> DeviceFit:
    """Seconds per token = sum over ggml types of bytes_t / (bandwidth x eta_t) + overhead
    + per_layer x layers + per_row x matrix rows, fitted to this device's measurements by least squares on relative error,
    each term pulled toward its default (ridge), so a device with one or two records moves only as
    far as they show and a type it never ran keeps its default. Records without a per-type split
    count their bytes under their kernel family; records without a layer count (older ones) fold
    the per-layer cost into the overhead, as the planner did then. Each record is divided by its
    own read rate: the fit is of seconds per byte, and the rate it is expressed against is their
    median (bandwidth_bytes_per_s), so a noisy probe today does not move a calibrated plan."""
    qf = quant_factors or {}
    pts: list[tuple[dict[str, float], float, int, int]] = []
    mem: list[float] = []
    rates: list[float] = []
    for r in records:
        y, bpt, bw = r.measured_decode_s, r.bytes_per_token, r.bandwidth_bytes_per_s
        if y <= 0 or bpt <= 0 or bw <= 0:
            continue
        by_type = r.bytes_by_type or {r.family or family_of(r.quant): bpt}
        pts.append(({t: b / bw for t, b in by_type.items() if b > 0}, y, max(0, r.n_layer), max(0, r.rows_per_token)))
        rates.append(bw)
        if r.measured_peak_bytes and r.predicted_peak_bytes:
            mem.append(float(r.measured_peak_bytes - r.predicted_peak_bytes))
    if not pts:
        return DeviceFit()
    import numpy as np  # ~0.2 s to import: only when there is something to fit

    types = sorted({t for z, _, _, _ in pts for t in z})
    layered = len({n for _, _, n, _ in pts if n}) >= 2  # the per-layer cost is told apart only by different depths
    # the per-row cost only by models of different rows per byte read (narrow and wide matrices)
    ratios_rows = [m / max(1.0, sum(z.values())) for z, _, _, m in pts if m]
    rowed = len(ratios_rows) >= 2 and max(ratios_rows) > 1.5 * min(ratios_rows)
    prior = np.array([1.0 / (eta * qf.get(t, 1.0)) for t in types] + [overhead_s] + ([per_layer_s] if layered else [])
                     + ([per_row_s] if rowed else []))
    rows, rhs = [], []
    for z, y, n, m in pts:  # relative residuals: a 2 ms model and a 2 s model weigh alike
        rows.append([z.get(t, 0.0) / y for t in types] + [1.0 / y] + ([n / y] if layered else []) + ([m / y] if rowed else []))
        rhs.append(1.0)
    ridge = np.sqrt(ridge)
    # loose units for the fixed costs: the overhead in 10 ms, the per-layer cost in 1 ms, the per-row cost in 100 ns
    scale = np.maximum(np.abs(prior), [1e-9] * len(types) + [0.01] + ([0.001] if layered else []) + ([1e-7] if rowed else []))
    for j in range(len(prior)):
        row = [0.0] * len(prior)
        row[j] = ridge / scale[j]
        rows.append(row)
        rhs.append(ridge * prior[j] / scale[j])
    a = np.array(rows)
    b = np.array(rhs)
    k = len(types)
    # Fixed costs cannot be negative: one that comes out so is held at 0 and the rest solved again
    # (clipping it afterwards would leave every other term fitted to a cost that is not there).
    free = np.ones(len(prior), dtype=bool)
    while True:
        theta = np.zeros(len(prior))
        theta[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
        negative = [j for j in range(k, len(prior)) if free[j] and theta[j] < 0]
        if not negative:
            break
        free[negative] = False
    theta[:k] = np.maximum(theta[:k], 0.05 * prior[:k])  # no type faster than 20x its default
    over = float(theta[k])
    per_layer = float(theta[k + 1]) if layered else None
    per_row = float(theta[k + 1 + int(layered)]) if rowed else None
    fitted = a[:len(pts)] @ theta  # fitted / measured seconds, per record
    ratios = sorted(float(f) for f in fitted)  # = measured tok/s / fitted tok/s
    type_eta = {t: 1.0 / float(theta[i]) for i, t in enumerate(types)}
    factors = {t: round(type_eta[t] / eta, 4) for t in types}
    scale_med = statistics.median(type_eta[t] / (eta * qf.get(t, 1.0)) for t in types)
    offset = int(statistics.median(mem)) if mem else 0
    calibrated = sum(1 for r in records if r.origin == "calibration")
    return DeviceFit(
        eta_scale=round(scale_med, 4), overhead_s=round(over, 6), family_factors=factors, memory_offset_bytes=offset,
        records=len(pts), per_layer_overhead_s=round(per_layer, 7) if per_layer is not None else None,
        per_row_s=per_row,
        bandwidth_bytes_per_s=statistics.median(rates), calibrated=calibrated,
        spread=(_quantile(ratios, 0.1), _quantile(ratios, 0.9)),
        source=f"fitted on {len(pts)} measurement(s) of this device"
               + (f" ({calibrated} from its first-contact calibration)" if calibrated else "")
               + f": efficiency x{scale_med:.2f} (median over {len(types)} tensor types), overhead {over * 1000:.2f} ms/token"
               + (f" + {per_layer * 1e6:.1f} us/layer" if per_layer is not None else "")
               + (f" + {per_row * 1e9:.1f} ns/matrix row" if per_row is not None else ""),
    )


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), on a sorted list."""
    if not sorted_values:
        return 1.0
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
