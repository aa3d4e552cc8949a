"""Leave-one-device-out accuracy of the decode-speed model on published llama.cpp measurements.

    .venv/bin/python bench/published_lodo.py [--csv PATH] [--rows] [--devices]

PATH defaults to ../shared/reference/published-benchmarks.csv next to the repository (the shared
reference folder of this workspace: /work/shared/reference/ beside /work/main; sizing.md there
describes it). For each distinct device (a chip: toolchain/plan/published.py, device_key) the
decode model is fitted on all other devices (published.fit_all) and predicts that device's rows;
the interval of each prediction comes from the held-in residual spread of its class. Printed per
device class: devices, rows, median absolute relative error of tok/s, share within 25 %, and the
share of held-out measurements inside the predicted low-high interval, beside the same figures
for what edgedeploy predicts today (basis.DEFAULT_EFFICIENCY, GPU_FALLBACK, PER_LAYER_OVERHEAD_S,
sizing.QUANT_FACTORS and CLASS_INTERVAL where it exists), twice: on the CSV's bandwidth basis
(the constants alone) and on the board database's basis (targets/boards/*.yaml through the rules
of basis._bandwidth: what `edgedeploy plan --board` uses; devices without a board keep the CSV
basis). Today's jetson/cuda and apple-silicon/metal constants were fitted on these same rows:
their figures are in-sample, not leave-one-device-out. Then the fit on all devices (the
parameters to adopt) with its spreads, and the rows left out and why. --rows prints every
held-out prediction, --devices the figures per device. Runs in about a second.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolchain.plan import published as P  # noqa: E402
from toolchain.plan.boards import BoardSpec  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "reference" / "published-benchmarks.csv"
GOAL_MEDIAN, GOAL_CLASS, GOAL_COVERAGE = 0.15, 0.25, 0.80
# A file type's name -> the ggml type most of its tensors have (today's QUANT_FACTORS are per type)
FTYPE_TYPE = {"IQ3_M": "IQ3_S", "IQ3_XS": "IQ3_XXS", "IQ2_M": "IQ2_S"}


@dataclass(frozen=True)
class Pred:
    record: P.Record
    tps: float
    low: float | None
    high: float | None

    @property
    def err(self) -> float:
        return abs(self.tps - self.record.tg_tps) / self.record.tg_tps

    @property
    def covered(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.record.tg_tps <= self.high


# --- what edgedeploy predicts today ----------------------------------------------------------------


def board_id_for(r: P.Record) -> str | None:
    """The board database entry of a published device (None: no entry)."""
    t = f"{r.name} {r.device}".lower()
    if re.search(r"raspberry pi 4|pi 400|bcm2711", t):
        return "rpi4-4gb"
    if re.search(r"raspberry pi 5|bcm2712", t):
        return "rpi5-8gb"
    if re.search(r"orange ?pi 5|rk3588", t):
        return "orangepi5-8gb"
    if "agx orin" in t:
        return "jetson-agx-orin-64gb"
    if "orin nano" in t:
        return "jetson-orin-nano-8gb"
    if "orin nx" in t:
        return "jetson-orin-nx-16gb"
    m = re.search(r"apple (m\d)( pro| max| ultra)?", t)
    if m:
        return f"apple-{m.group(1)}" + (f"-{m.group(2).strip()}" if m.group(2) else "")
    m = re.search(r"snapdragon 8 gen ([23])", t)
    if m:
        return f"snapdragon-8-gen-{m.group(1)}"
    return "tensor-g3" if "tensor g3" in t else None


def _boards() -> dict[str, BoardSpec]:
    """The board database, file by file: one unreadable file (being edited) costs only itself."""
    from toolchain.core.errors import BadInputError
    from toolchain.core.paths import targets_dir
    from toolchain.plan import boards

    out = {}
    for path in sorted((targets_dir() / "boards").glob("*.yaml")):
        try:
            b = boards._load(path)
        except BadInputError as exc:
            print(f"(board file left out: {exc})", file=sys.stderr)
            continue
        out[b.id] = b
    return out


def today_predictor(board_basis: bool) -> Callable[[P.Record], Pred]:
    from toolchain.plan import basis as B
    from toolchain.plan.sizing import QUANT_FACTORS

    boards = _boards() if board_basis else {}
    intervals: dict[tuple[str, str], tuple[float, float]] = getattr(B, "CLASS_INTERVAL", {})
    fallback_interval: tuple[float, float] | None = getattr(B, "GPU_FALLBACK_INTERVAL", None)

    def bandwidth(r: P.Record) -> float:
        board = boards.get(board_id_for(r) or "")
        if board is None:
            return r.bandwidth_bytes_per_s
        if r.backend in ("cuda", "metal", "vulkan") and board.device_class in B.UNIFIED_MEMORY_CLASSES:
            return board.peak_bandwidth_bytes_per_s * 0.7
        return board.measured_read_bytes_per_s or board.peak_bandwidth_bytes_per_s * 0.7

    def predict(r: P.Record) -> Pred:
        eta, overhead = B.DEFAULT_EFFICIENCY.get(r.group, B.GPU_FALLBACK)
        cpu = r.backend == "cpu"
        factor = QUANT_FACTORS.get(FTYPE_TYPE.get(r.family, r.family), 1.0) if cpu else 1.0
        per_layer = B.per_layer_default(r.group[0], r.backend)
        s = r.bytes_per_token / (bandwidth(r) * eta * factor) + overhead + per_layer * r.n_layer
        iv = intervals.get(r.group, fallback_interval) if intervals else None
        return Pred(r, 1.0 / s, iv[0] / s if iv else None, iv[1] / s if iv else None)

    return predict


# --- the tables ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    devices: int
    rows: int
    median: float
    within25: float
    coverage: float | None
    device_median: float  # the median over devices of each device's median error


def stats(preds: Sequence[Pred]) -> Stats:
    by_dev: dict[str, list[float]] = defaultdict(list)
    for p in preds:
        by_dev[p.record.device].append(p.err)
    cov = [c for c in (p.covered for p in preds) if c is not None]
    return Stats(len(by_dev), len(preds), statistics.median(p.err for p in preds), sum(p.err <= 0.25 for p in preds) / len(preds),
                 sum(cov) / len(cov) if cov else None, statistics.median(statistics.median(v) for v in by_dev.values()))


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:4.0f}%"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_table(columns: dict[str, list[Pred]]) -> dict[str, dict[str, Stats]]:
    groups = sorted({p.record.group for preds in columns.values() for p in preds})
    out: dict[str, dict[str, Stats]] = {}
    head = f"{'class/backend':<22} {'dev':>3} {'rows':>4}"
    sub = " " * len(head)
    for name in columns:
        head += f" | {name:^23}"
        sub += f" | {'med.err  <=25%  cover':^23}"
    print(head)
    print(sub)
    for g in [*groups, ("all", "")]:
        label = "/".join(x for x in g if x)
        line = ""
        for name, preds in columns.items():
            sel = [p for p in preds if g[0] == "all" or p.record.group == g]
            s = stats(sel)
            out.setdefault(name, {})[label] = s
            if not line:
                line = f"{label:<22} {s.devices:>3} {s.rows:>4}"
            line += f" |  {_pct(s.median)}  {_pct(s.within25)}  {_pct(s.coverage)} "
        print(("-" * len(line) + "\n") if g[0] == "all" else "", end="")
        print(line)
    line = f"{'median over devices':<31}"
    for name in columns:
        line += f" |  {_pct(out[name]['all'].device_median):<21}"
    print(line)
    return out


def print_goals(name: str, s: dict[str, Stats]) -> None:
    overall = s["all"]
    worst = max(((k, v.median) for k, v in s.items() if k != "all"), key=lambda kv: kv[1])
    cov = overall.coverage
    print(f"  {name}: median {_pct(overall.median).strip()} (goal <= 15 %: {_mark(overall.median <= GOAL_MEDIAN)}); "
          f"worst class {worst[0]} {_pct(worst[1]).strip()} (goal every class <= 25 %: {_mark(worst[1] <= GOAL_CLASS)}); "
          f"coverage {_pct(cov).strip()} (goal >= 80 %: {_mark(cov is not None and cov >= GOAL_COVERAGE)})")


def print_fits(fits: dict[tuple[str, str], P.ClassFit]) -> None:
    print("\nFit on all devices (the defaults to adopt; efficiency of the bandwidth basis: measured read, else 0.7 x peak):")
    for _g, f in sorted(fits.items()):
        print(f"  {f.device_class}/{f.backend}: efficiency {f.efficiency:.3f}, overhead {f.overhead_s * 1000:.2f} ms "
              f"+ {f.per_layer_s * 1e6:.0f} us x n_layer; {len(f.devices)} device(s), {f.rows} rows")
        print(f"    interval (measured/predicted tok/s): {f.spread[0]:.2f}-{f.spread[1]:.2f} "
              f"(raw 10th-90th {f.raw_spread[0]:.2f}-{f.raw_spread[1]:.2f}; {f.spread_source})")
        if f.family_factors:
            print("    family factors: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(f.family_factors.items())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"published benchmarks (default {DEFAULT_CSV})")
    ap.add_argument("--rows", action="store_true", help="print every held-out prediction")
    ap.add_argument("--devices", action="store_true", help="print the figures per device")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        print(f"no such file: {args.csv} (give --csv PATH)", file=sys.stderr)
        return 2

    rows = P.read_csv(args.csv)
    records, skipped = P.records_from_rows(rows, P.catalog_layers())
    if not records:
        print(f"no usable rows in {args.csv}", file=sys.stderr)
        return 2
    result = P.lodo(records)
    new = [Pred(h.record, h.predicted_tps, h.low_tps, h.high_tps) for h in result.held]
    today_csv, today_board = today_predictor(False), today_predictor(True)
    held = [h.record for h in result.held]
    columns = {"new fit (LODO)": new, "today, CSV basis": [today_csv(r) for r in held],
               "today, board basis": [today_board(r) for r in held]}
    print(f"{args.csv}: {len(rows)} rows, {len(records)} used, {len(skipped)} left out; "
          f"{len({r.device for r in records})} devices (chips)\n")
    table = print_table(columns)
    print("\nGoals: median <= 15 %, every class <= 25 %, interval coverage >= 80 %")
    for name, s in table.items():
        print_goals(name, s)

    if args.devices:
        print(f"\n{'device':<18} {'class/backend':<22} {'rows':>4}  new med.err  cover  today(board)  fitted on")
        by_dev: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(new):
            by_dev[p.record.device].append(i)
        for d, idx in sorted(by_dev.items()):
            sn, st = stats([new[i] for i in idx]), stats([columns["today, board basis"][i] for i in idx])
            fit = result.held[idx[0]].fit
            print(f"{d:<18} {'/'.join(new[idx[0]].record.group):<22} {len(idx):>4}  {_pct(sn.median):>11}  {_pct(sn.coverage)}  "
                  f"{_pct(st.median):>12}  {len(fit.devices)} device(s), {fit.spread_source[:60]}")
    if args.rows:
        print(f"\n{'device':<16} {'model':<22} {'quant':<8} {'meas':>7} {'new':>7} {'low':>7} {'high':>7} {'today':>7}")
        for p, t in zip(new, columns["today, board basis"], strict=True):
            r = p.record
            print(f"{r.device[:16]:<16} {r.model[:22]:<22} {r.quant[:8]:<8} {r.tg_tps:7.2f} {p.tps:7.2f} "
                  f"{p.low or 0:7.2f} {p.high or 0:7.2f} {t.tps:7.2f}")

    print_fits(P.fit_all(records))
    reasons: dict[str, int] = defaultdict(int)
    for _i, why in skipped:
        reasons[why.split(":")[0]] += 1
    print("\nLeft out: " + "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
