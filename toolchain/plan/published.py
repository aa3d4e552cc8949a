"""Decode-speed defaults per device class and backend, fitted to published llama.cpp measurements.

Reads ../shared/reference/published-benchmarks.csv (columns: device, ram_gb, soc,
mem_bw_gbs_measured, mem_bw_gbs_peak, model, params_b, quant, file_gb, threads, backend, pp_tps,
tg_tps, source) into Records and fits, per (device class, backend),

    seconds/token = bytes/token / (bandwidth x efficiency x family_factor[family])
                    + overhead_s + per_layer_s x n_layer

by least squares on relative error, with a mild ridge pull toward physical priors, and the residual
spread (10th-90th percentile of measured / predicted tok/s) so that a prediction carries a low-high
interval. lodo() predicts each device from a fit on all other devices (bench/published_lodo.py).
Everything here is pure except read_csv (the CSV) and catalog_layers (the model catalog).

Rules, in the order they are applied to a CSV row:

* Runtime: the backend text must name llama.cpp, ollama or yzma (which run llama.cpp's kernels);
  llamafile (own tinyBLAS kernels) and distributed-llama are other engines: skipped.
* Bytes read per token = the file size (file_gb x 1e9). Rows where that is wrong are skipped, as
  the planner's earlier fit did: MoE (only the active experts are read), partial offload (two
  devices), swapping (storage, not RAM), and per-layer-embedding models "(PLE)" (Gemma 3n/4: the
  PLE tables are a row gather like token_embd, so the file overstates the bytes read). Rows with
  no file size or no tg are skipped too (nothing to put the bytes against).
* Backend class: "Metal" -> metal, "CUDA" -> cuda, "Vulkan" -> vulkan, "CPU"/ollama/yzma without a
  GPU backend -> cpu. Other GPU backends (HIP, SYCL, OpenCL) are skipped: no planner defaults.
* Device class from the device and soc text (first rule that matches):
    jetson         "Jetson", "Orin", "Thor" (the GPU shares the board's LPDDR)
    unified-gpu    DGX Spark / GB10, Ryzen AI Max / Strix Halo: a big GPU on unified memory
    apple-silicon  "Apple M<n>" (Macs; Metal or CPU backend)
    phone-cpu      Snapdragon, Dimensity, Exynos, Tensor G<n>, Kirin, Pixel, Galaxy, iPhone,
                   Android, "phone"
    discrete-gpu   a GPU backend on RTX/GTX/Quadro/Tesla/A100/H100/L4/L40/Radeon/Arc (own VRAM)
    sbc-cpu        Raspberry Pi / BCM27xx, Orange Pi, Rockchip RK3xxx, Radxa/Rock, Odroid,
                   Allwinner, Amlogic, bare Cortex-A cores
    x86-cpu        Intel, Xeon, Core i<n>, Ryzen, EPYC, Threadripper, Celeron, N100, x86
  with a GPU backend on an x86 host -> discrete-gpu; nothing matched: cuda/vulkan -> discrete-gpu,
  metal -> apple-silicon, cpu -> skipped (no guess at the class of an unnamed CPU).
* Device (the unit of leave-one-device-out): the SoC text without its parenthesised details, else
  the device name without them: "Apple M1 (7-core GPU)" and "(8-core GPU)" are one chip, the Pi 4
  and the Pi 400 are one BCM2711. Variants of a chip share memory and bandwidth; holding one out
  while fitting on its twin would leak.
* Bandwidth basis, what the planner would use: the row's measured read rate; else the median
  measured read of other rows of the same device; else 0.7 x the peak.
* n_layer (the per-layer overhead): a "n_layer" column when the CSV has one; else the catalog
  entry (profiles/models/*.yaml) whose name matches the model's (case, punctuation and
  instruct/chat/it suffixes ignored); else the catalog entry nearest in parameters if within
  10 % (Llama-2-70B -> llama-3-70b: 80); else the power law n_layer = 25.9 x params_b^0.159, least
  squares on log-log over the dense catalog entries (0.13B: 19, 1B: 26, 7B: 35, 70B: 51 layers;
  the catalog's own spread at a given size is about +-30 %).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolchain.plan.calibration import family_of

__all__ = [
    "PRIORS", "ClassFit", "Held", "LodoResult", "Prior", "Record", "backend_class", "catalog_layers", "device_class",
    "device_key", "estimate_layers", "fit_all", "fit_class", "lodo", "prior_fit", "prior_for", "prior_spread", "read_csv",
    "records_from_rows", "spread_of",
]

# n_layer = LAYER_LAW[0] x params_b ** LAYER_LAW[1]: fitted on profiles/models/*.yaml (dense entries)
LAYER_LAW = (25.9, 0.159)
NEAREST_PARAMS = 0.10  # a catalog entry within 10 % of the parameters lends its layer count
PEAK_SHARE = 0.7  # the planner's bandwidth when no read rate is measured (basis._bandwidth)
RIDGE = 0.02  # a one-sigma move of one parameter costs what a 14 % rms error over one device does
FAMILY_SIGMA = 0.25  # per-family factors: a +-25 % departure from the class efficiency is one sigma
ROW_SIGMA = 0.10  # the scatter of one published row about the model (builds, runs, rounding)
SPREAD_FLOOR = 0.15  # the interval is at least -14 % / +16 % around the median: builds and runs differ
MIN_DEVICES_FOR_OWN_SPREAD = 3  # fewer: the class's residuals are pooled with the other classes'


@dataclass(frozen=True)
class Prior:
    """Where the fit starts and how far one sigma of evidence moves it: efficiency of the
    bandwidth basis (relative sigma), overhead_s and per_layer_s (absolute sigmas, seconds)."""

    efficiency: float
    overhead_s: float
    per_layer_s: float
    eff_sigma: float = 0.5
    overhead_sigma: float = 0.002
    per_layer_sigma: float = 0.0001


# Physics and literature only, never these CSV rows (the leave-one-device-out falls back to them
# for a class with no other device). CPUs: decode reaches 0.85-0.9 of a read-only bandwidth probe
# (sizing.md: Pi 5, llama.cpp#26484; x86 #25976), thread barriers ~30 us per layer (this project's
# x86 measurements); phones lower (big.LITTLE, thermals). GPUs stream weights at 0.65-0.8 of peak
# (sizing.md: RTX 3090/4090/5090, Orin, Spark) = 1.0 x the 0.7 x peak basis, and pay ~100 us of
# kernel launches and syncs per layer.
PRIORS: dict[tuple[str, str], Prior] = {
    ("sbc-cpu", "cpu"): Prior(0.85, 0.0015, 0.00003),
    ("x86-cpu", "cpu"): Prior(0.85, 0.0015, 0.00003),
    ("phone-cpu", "cpu"): Prior(0.70, 0.0020, 0.00003),
    ("jetson", "cpu"): Prior(0.35, 0.0015, 0.00003),  # basis.py's estimate: the CPU complex's port, a third of the GPU's
    ("apple-silicon", "cpu"): Prior(1.1, 0.0015, 0.00003),  # M1 CPU >= 53.3 of 68.2 GB/s (llama.cpp#1642) = 1.1 x basis
    ("unified-gpu", "cpu"): Prior(0.85, 0.0015, 0.00003),
    # Desktop GPUs with CUDA graphs: Llama-2-7B Q4_0 at 64-72 % of peak overhead included (sizing.md:
    # RTX 3090/4090/5090, discussion #15013): the basis at 1.0 and a small fixed cost.
    ("discrete-gpu", "cuda"): Prior(1.0, 0.0003, 0.00001, overhead_sigma=0.003, per_layer_sigma=0.0001),
    # DGX Spark: ~80 % of peak on the same model (sizing.md, #15013) = 1.1 x basis with overhead.
    ("unified-gpu", "cuda"): Prior(1.1, 0.0005, 0.00002, overhead_sigma=0.003, per_layer_sigma=0.0001),
    # Jetson AGX Orin: Llama-2-7B Q4_0 at ~63 % of peak, overhead included (sizing.md, llama.cpp
    # discussion #15013 -- not a row of the CSV) = 0.9 x the basis; the A78AE host cores launch
    # kernels more slowly than a desktop CPU: 150 us per layer.
    ("jetson", "cuda"): Prior(0.9, 0.001, 0.00015, overhead_sigma=0.005, per_layer_sigma=0.0002),
}
GPU_PRIOR = Prior(1.0, 0.001, 0.0001, overhead_sigma=0.005, per_layer_sigma=0.0002)  # launch costs vary by host CPU
VULKAN_PRIOR = Prior(0.8, 0.002, 0.00015, overhead_sigma=0.005, per_layer_sigma=0.0002)


def prior_for(device_class: str, backend: str) -> Prior:
    if (device_class, backend) in PRIORS:
        return PRIORS[(device_class, backend)]
    if backend == "cpu":
        return Prior(0.85, 0.0015, 0.00003)
    return VULKAN_PRIOR if backend == "vulkan" else GPU_PRIOR


@dataclass(frozen=True)
class Record:
    device: str  # the chip (device_key): the unit held out
    name: str  # the device as published
    device_class: str
    backend: str  # cpu / cuda / metal / vulkan
    bandwidth_bytes_per_s: float
    bandwidth_source: str  # "measured", "measured (same device)", "0.7 x peak"
    peak_bandwidth_bytes_per_s: float | None
    bytes_per_token: float
    params_b: float
    n_layer: int
    n_layer_source: str
    model: str
    quant: str
    family: str
    tg_tps: float
    source: str = ""

    @property
    def group(self) -> tuple[str, str]:
        return (self.device_class, self.backend)


# --- reading -------------------------------------------------------------------------------------

RUNTIMES = ("llama.cpp", "ollama", "yzma")
SKIP_MARKS = ("swapping", "partial offload", "moe", "(ple)")  # bytes per token is not the file size


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def backend_class(backend: str) -> str | None:
    b = backend.lower()
    if not any(r in b for r in RUNTIMES) or "not llama.cpp" in b or "distributed-llama" in b:
        return None
    if "metal" in b:
        return "metal"
    if "cuda" in b:
        return "cuda"
    if "vulkan" in b:
        return "vulkan"
    if any(k in b for k in ("hip", "rocm", "sycl", "opencl", "cann", "musa")):
        return None
    return "cpu"


_RULES: tuple[tuple[str, str], ...] = (
    ("jetson", r"jetson|\borin\b|\bthor\b"),
    ("unified-gpu", r"dgx spark|\bgb10\b|ryzen ai max|strix halo|\b8060s\b"),
    ("apple-silicon", r"\bapple m\d|\bm\d (pro|max|ultra)\b"),
    ("phone-cpu", r"snapdragon|dimensity|exynos|tensor g\d|kirin|pixel|galaxy|iphone|android|phone|\bsm8\d{3}\b"),
    ("discrete-gpu", r"\brtx\b|\bgtx\b|quadro|tesla|\ba100\b|\bh100\b|\bh200\b|\bl40s?\b|\bl4\b|radeon|\barc a\d|\bb580\b"),
    ("sbc-cpu", r"raspberry pi|\bbcm27\d\d|orange ?pi|\brk3\d{3}|radxa|\brock ?\d|odroid|allwinner|amlogic|cortex-a|\ba(53|55|72|76|78)\b"),
    ("x86-cpu", r"intel|xeon|core i\d|ryzen|epyc|threadripper|celeron|\bn100\b|x86"),
)


def device_class(device: str, soc: str, backend: str) -> str | None:
    """The planner's device class of a row (module docstring), or None when nothing says."""
    text = f"{device} {soc}".lower()
    gpu = backend in ("cuda", "vulkan")
    for cls, pattern in _RULES:
        if re.search(pattern, text):
            if cls == "x86-cpu" and gpu:
                return "discrete-gpu"  # a GPU backend on an x86 host: the card's own VRAM
            return cls
    if gpu:
        return "discrete-gpu"
    if backend == "metal":
        return "apple-silicon"
    return None


def device_key(device: str, soc: str) -> str:
    """The chip: parenthesised details (GPU cores, revision, memory) dropped."""
    base = re.sub(r"\([^)]*\)", "", soc or device)
    base = re.sub(r"\s+", " ", base).strip(" ,;/")
    return base or device.strip()


def _norm_name(name: str) -> str:
    s = re.sub(r"\([^)]*\)", "", name.lower())
    s = re.sub(r"[^a-z0-9.]", "", s.replace(":", "-"))
    for suffix in ("instruct", "chat", "it", "base", "hf"):
        s = s.removesuffix(suffix)
    return s.rstrip(".")


def catalog_layers() -> list[tuple[str, float, int]]:
    """(name, params in billions, n_layer) of every dense entry of the model catalog."""
    from toolchain.models.catalog import load_catalog

    out = []
    for e in load_catalog().values():
        if e.arch.n_expert:
            continue
        out.append((e.id, e.params / 1e9, e.arch.n_layer))
        out.append((e.name, e.params / 1e9, e.arch.n_layer))
    return out


def estimate_layers(model: str, params_b: float, layers: Sequence[tuple[str, float, int]] = ()) -> tuple[int, str]:
    """n_layer of a published model: the catalog entry of the same name, else the catalog entry
    nearest in parameters when within NEAREST_PARAMS, else the power law."""
    key = _norm_name(model)
    for name, _p, n in layers:
        if key and _norm_name(name) == key:
            return n, f"catalog {name}"
    if params_b > 0 and layers:
        name, p, n = min(layers, key=lambda e: abs(math.log(e[1] / params_b)))
        if abs(math.log(p / params_b)) <= math.log(1 + NEAREST_PARAMS):
            return n, f"catalog, nearest params: {name}"
    c, k = LAYER_LAW
    return max(1, round(c * max(params_b, 0.01) ** k)), f"power law {c} x params_b^{k}"


def _num(s: str | None) -> float | None:
    try:
        v = float(s) if s else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) and v > 0 else None


def records_from_rows(rows: Iterable[dict[str, str]], layers: Sequence[tuple[str, float, int]] = ()) -> tuple[list[Record], list[tuple[int, str]]]:
    """Records of the usable rows, and (row index, why) of the others."""
    rows = list(rows)
    measured_by_device: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        m = _num(row.get("mem_bw_gbs_measured"))
        if m:
            measured_by_device[device_key(row.get("device", ""), row.get("soc", ""))].append(m)
    out: list[Record] = []
    skipped: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        why, rec = _record(row, measured_by_device, layers)
        if rec is None:
            skipped.append((i, why))
        else:
            out.append(rec)
    return out, skipped


def _record(row: dict[str, str], measured_by_device: dict[str, list[float]],
            layers: Sequence[tuple[str, float, int]]) -> tuple[str, Record | None]:
    dev, soc, backend_text = row.get("device", ""), row.get("soc", ""), row.get("backend", "")
    backend = backend_class(backend_text)
    if backend is None:
        return f"runtime/backend not used: {backend_text!r}", None
    marks = f"{backend_text} {row.get('model', '')}".lower()
    mark = next((m for m in SKIP_MARKS if m in marks), None)
    if mark:
        return f"bytes per token is not the file size ({mark})", None
    tg, size = _num(row.get("tg_tps")), _num(row.get("file_gb"))
    if tg is None or size is None:
        return "no tg or no file size", None
    cls = device_class(dev, soc, backend)
    if cls is None:
        return "device class unknown", None
    key = device_key(dev, soc)
    own, peak = _num(row.get("mem_bw_gbs_measured")), _num(row.get("mem_bw_gbs_peak"))
    if own:
        bw, src = own, "measured"
    elif measured_by_device.get(key):
        bw, src = statistics.median(measured_by_device[key]), "measured (same device)"
    elif peak:
        bw, src = PEAK_SHARE * peak, "0.7 x peak"
    else:
        return "no bandwidth", None
    params = _num(row.get("params_b")) or 0.0
    given = _num(row.get("n_layer") or row.get("n_layers"))
    n_layer, n_src = (int(given), "csv") if given else estimate_layers(row.get("model", ""), params, layers)
    quant = (row.get("quant") or "").split(" ")[0].replace("4-bit", "Q4_0")
    return "", Record(
        device=key, name=dev, device_class=cls, backend=backend, bandwidth_bytes_per_s=bw * 1e9, bandwidth_source=src,
        peak_bandwidth_bytes_per_s=peak * 1e9 if peak else None, bytes_per_token=size * 1e9, params_b=params,
        n_layer=n_layer, n_layer_source=n_src, model=row.get("model", ""), quant=quant, family=family_of(quant),
        tg_tps=tg, source=row.get("source", ""),
    )


# --- the model and its fit -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFit:
    """Decode seconds/token = bytes / (bw x efficiency x family_factors.get(family, 1)) + overhead_s
    + per_layer_s x n_layer; measured/predicted tok/s of a device never seen lies within spread
    (low, high) about 80 % of the time."""

    device_class: str
    backend: str
    efficiency: float
    family_factors: dict[str, float]
    overhead_s: float
    per_layer_s: float
    devices: tuple[str, ...] = ()  # the devices fitted on
    rows: int = 0
    spread: tuple[float, float] = (0.5, 2.0)  # widened: what an interval uses
    raw_spread: tuple[float, float] = (0.5, 2.0)  # 10th/90th percentile before widening
    spread_source: str = "none"

    def decode_s(self, r: Record) -> float:
        eta = self.efficiency * self.family_factors.get(r.family, 1.0)
        return r.bytes_per_token / (r.bandwidth_bytes_per_s * eta) + self.overhead_s + self.per_layer_s * r.n_layer

    def tps(self, r: Record) -> float:
        return 1.0 / self.decode_s(r)

    def interval(self, r: Record) -> tuple[float, float]:
        p = self.tps(r)
        return p * self.spread[0], p * self.spread[1]


def prior_fit(device_class: str, backend: str) -> ClassFit:
    p = prior_for(device_class, backend)
    return ClassFit(device_class, backend, p.efficiency, {}, p.overhead_s, p.per_layer_s, spread_source="prior")


def _weights(records: Sequence[Record]) -> list[float]:
    """Every device weighs 1 in total, whatever its row count."""
    n: dict[str, int] = defaultdict(int)
    for r in records:
        n[r.device] += 1
    return [1.0 / n[r.device] for r in records]


def _solve(records: Sequence[Record], families: list[str], theta0: list[float], theta_sigma: list[float],
           prior: Prior, ridge: float, row_scale: float = 1.0) -> tuple[list[float], float, float]:
    """Least squares on relative error of seconds/token over theta_f (= 1 / (bw-normalised
    efficiency of family f)), overhead and per-layer overhead, each pulled toward its prior
    (theta0 / theta_sigma, prior.overhead_s / overhead_sigma, ...) with weight ridge; rows weigh
    _weights() x row_scale. A negative overhead is pinned at zero and the rest refitted. A family
    not in families counts under column 0."""
    import numpy as np  # ~0.2 s to import: only when something is fitted

    nf = len(families)
    col = {f: j for j, f in enumerate(families)}
    rows: list[list[float]] = []
    rhs: list[float] = []
    for r, wi in zip(records, _weights(records), strict=True):
        y = 1.0 / r.tg_tps
        s = math.sqrt(wi * row_scale)
        row = [0.0] * (nf + 2)
        row[col.get(r.family, 0)] = s * r.bytes_per_token / r.bandwidth_bytes_per_s / y
        row[nf] = s / y
        row[nf + 1] = s * r.n_layer / y
        rows.append(row)
        rhs.append(s)
    centre = [*theta0, prior.overhead_s, prior.per_layer_s]
    sigma = [*theta_sigma, prior.overhead_sigma, prior.per_layer_sigma]
    k = math.sqrt(ridge)
    for j, (c, sg) in enumerate(zip(centre, sigma, strict=True)):
        row = [0.0] * (nf + 2)
        row[j] = k / sg
        rows.append(row)
        rhs.append(k * c / sg)
    a, b = np.array(rows), np.array(rhs)
    free = list(range(nf + 2))
    theta = np.zeros(nf + 2)
    for _ in range(3):
        theta[:] = 0.0
        theta[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
        neg = [j for j in (nf, nf + 1) if j in free and theta[j] < 0]
        if not neg:
            break
        free = [j for j in free if j not in neg]
    th = [max(float(theta[j]), 0.05 * theta0[j]) for j in range(nf)]
    return th, max(float(theta[nf]), 0.0), max(float(theta[nf + 1]), 0.0)


def fit_class(records: Sequence[Record], prior: Prior | None = None, ridge: float = RIDGE) -> ClassFit:
    """One (class, backend), in two steps. (1) One efficiency for all families with the overheads,
    every device weighing 1 and the priors worth `ridge` (a one-sigma move costs what a
    sqrt(ridge) rms error over one device does). (2) Per-family efficiencies with the overheads,
    rows weighing as in (1) but rescaled to a mean of 1, each family pulled toward (1)'s
    efficiency by FAMILY_SIGMA and the overheads toward their priors, each prior worth one row off
    by ROW_SIGMA: a family's factor moves as far as a few consistent rows show (device weights
    alone would bury a 5-row family of a 90-row device under any prior), and a family seen on no
    row keeps factor 1. The efficiency is the geometric mean of the families' over the rows
    (device-weighted); family_factors are relative to it."""
    if not records:
        raise ValueError("no records to fit")
    cls, backend = records[0].group
    if any(r.group != (cls, backend) for r in records):
        raise ValueError("records of more than one (class, backend)")
    prior = prior or prior_for(cls, backend)
    inv0 = 1.0 / prior.efficiency
    (common,), _, _ = _solve(records, ["*"], [inv0], [prior.eff_sigma * inv0], prior, ridge)
    families = sorted({r.family for r in records})
    w = _weights(records)
    scale = len(w) / sum(w)
    th, over, per_layer = _solve(records, families, [common] * len(families), [FAMILY_SIGMA * common] * len(families),
                                 prior, ROW_SIGMA**2, row_scale=scale)
    eta_f = {f: 1.0 / t for f, t in zip(families, th, strict=True)}
    log_eta = sum(wi * math.log(eta_f[r.family]) for r, wi in zip(records, w, strict=True)) / sum(w)
    eff = math.exp(log_eta)
    factors = {f: round(e / eff, 4) for f, e in eta_f.items()} if len(families) > 1 else {}
    return ClassFit(cls, backend, round(eff, 4), factors, round(over, 6), round(per_layer, 7),
                    devices=tuple(sorted({r.device for r in records})), rows=len(records))


# --- residual spread -----------------------------------------------------------------------------


def _wquantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    acc = 0.0
    for i, (v, w) in enumerate(pairs):
        lo, acc = acc, acc + w
        mid = (lo + acc) / 2
        if mid / total >= q:
            if i == 0:
                return v
            pv, pw = pairs[i - 1]
            pmid = lo - pw / 2
            t = (q * total - pmid) / (mid - pmid) if mid > pmid else 1.0
            return pv + t * (v - pv)
    return pairs[-1][0]


def spread_of(residuals: Sequence[tuple[str, float]], n_devices: int, n_models: int = 0,
              widen: bool = True) -> tuple[tuple[float, float], tuple[float, float]]:
    """(widened, raw) 10th/90th percentiles of measured/predicted tok/s from (device, ln ratio)
    residuals, each device weighing 1. Widening, in log space about the median, by
    k = 1 + 1/sqrt(n_devices) + 1/sqrt(n_models): residuals of few devices, or of few models,
    do not show how far an unseen device or model lands (one device and one model: x3; eight
    devices of one model: x2.35; one device, eight models: x2.35); then at least SPREAD_FLOOR
    either side of the median, and always holding the prediction itself."""
    if not residuals:
        return (0.5, 2.0), (0.5, 2.0)
    n: dict[str, int] = defaultdict(int)
    for d, _ in residuals:
        n[d] += 1
    vals = [v for _, v in residuals]
    w = [1.0 / n[d] for d, _ in residuals]
    lo, mid, hi = (_wquantile(vals, w, q) for q in (0.1, 0.5, 0.9))
    raw = (round(math.exp(lo), 3), round(math.exp(hi), 3))
    if not widen:
        return raw, raw
    k = 1.0 + 1.0 / math.sqrt(max(n_devices, 1)) + (1.0 / math.sqrt(n_models) if n_models else 0.0)
    wlo, whi = mid - k * (mid - lo), mid + k * (hi - mid)
    wlo, whi = min(wlo, mid - SPREAD_FLOOR, -SPREAD_FLOOR / 2), max(whi, mid + SPREAD_FLOOR, SPREAD_FLOOR / 2)
    return (round(math.exp(wlo), 3), round(math.exp(whi), 3)), raw


def _residuals(fit: ClassFit, records: Iterable[Record]) -> list[tuple[str, float]]:
    return [(r.device, math.log(r.tg_tps / fit.tps(r))) for r in records]


def _inner_lodo(records: Sequence[Record], ridge: float) -> list[tuple[str, float]]:
    """Residuals of each device of one class predicted from the class's other devices."""
    out: list[tuple[str, float]] = []
    for d in sorted({r.device for r in records}):
        rest = [r for r in records if r.device != d]
        out += _residuals(fit_class(rest, ridge=ridge), (r for r in records if r.device == d))
    return out


def fit_all(records: Sequence[Record], ridge: float = RIDGE) -> dict[tuple[str, str], ClassFit]:
    """A fit per (class, backend) with its spread. The spread is that of device-out residuals
    (each device predicted from the class's other devices) when the class has at least
    MIN_DEVICES_FOR_OWN_SPREAD devices; with fewer, the class's residuals (device-out with two
    devices, in-sample with one) are pooled with the device-out residuals of the other classes,
    so a lone device's tidy in-sample scatter does not pass for the spread across devices."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[r.group].append(r)
    fits = {g: fit_class(rs, ridge=ridge) for g, rs in groups.items()}
    own: dict[tuple[str, str], list[tuple[str, float]]] = {}
    between: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for g, rs in groups.items():
        n = len({r.device for r in rs})
        if n >= 2:
            between[g] = own[g] = _inner_lodo(rs, ridge)
        else:
            own[g] = _residuals(fits[g], rs)
    out = {}
    for g, fit in fits.items():
        n = len(fit.devices)
        if n >= MIN_DEVICES_FOR_OWN_SPREAD:
            res, src = own[g], f"device-out residuals of {n} devices"
        else:
            others = [x for h, v in between.items() if h != g for x in v]
            res = own[g] + others
            src = f"{n} device(s): own residuals pooled with {len({d for d, _ in others})} devices of other classes"
        widened, raw = spread_of(res, n, len({r.model for r in groups[g]}))
        out[g] = replace(fit, spread=widened, raw_spread=raw, spread_source=src)
    return out


def prior_spread(records: Sequence[Record]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The interval of a class with no published device: how far the priors miss on the devices
    that are known (the weighted 80th percentile of |ln(measured / prior prediction)| over all
    given records, each device weighing 1), symmetric about the prior prediction, which stays the
    best guess; at least SPREAD_FLOOR."""
    if not records:
        return (0.5, 2.0), (0.5, 2.0)
    res = [(r.device, abs(math.log(r.tg_tps / prior_fit(*r.group).tps(r)))) for r in records]
    n: dict[str, int] = defaultdict(int)
    for d, _ in res:
        n[d] += 1
    h = max(_wquantile([v for _, v in res], [1.0 / n[d] for d, _ in res], 0.8), SPREAD_FLOOR)
    band = (round(math.exp(-h), 3), round(math.exp(h), 3))
    return band, band


# --- leave one device out ------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    record: Record
    predicted_tps: float
    low_tps: float
    high_tps: float
    fit: ClassFit

    @property
    def rel_error(self) -> float:
        return abs(self.predicted_tps - self.record.tg_tps) / self.record.tg_tps

    @property
    def covered(self) -> bool:
        return self.low_tps <= self.record.tg_tps <= self.high_tps


@dataclass(frozen=True)
class LodoResult:
    held: list[Held] = field(default_factory=list)
    fits: dict[str, dict[tuple[str, str], ClassFit]] = field(default_factory=dict)  # per held-out device


def lodo(records: Sequence[Record], ridge: float = RIDGE,
         fitter: Callable[[Sequence[Record]], dict[tuple[str, str], ClassFit]] | None = None) -> LodoResult:
    """For each device: fit on all other devices, predict that device's rows with its class's fit
    (the priors when no other device of the class is left, with the priors' own spread)."""
    fit_fn = fitter or (lambda rs: fit_all(rs, ridge))
    held: list[Held] = []
    fits: dict[str, dict[tuple[str, str], ClassFit]] = {}
    for d in sorted({r.device for r in records}):
        train = [r for r in records if r.device != d]
        test = [r for r in records if r.device == d]
        fitted = fit_fn(train) if train else {}
        fits[d] = fitted
        for r in test:
            fit = fitted.get(r.group)
            if fit is None:
                widened, raw = prior_spread(train) if train else ((0.5, 2.0), (0.5, 2.0))
                fit = replace(prior_fit(*r.group), spread=widened, raw_spread=raw,
                              spread_source="prior (no other device of the class): spread of the priors over all other devices")
            lo, hi = fit.interval(r)
            held.append(Held(r, fit.tps(r), lo, hi, fit))
    return LodoResult(held, fits)
