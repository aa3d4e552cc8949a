"""Glue for the planner: facts + board database + overrides + calibration -> basis; catalog +
local files -> options. The decisions themselves stay pure in planner.py."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.core.errors import BadInputError
from toolchain.core.nouns import Basis, HostFacts, Prediction, RuntimeDevice
from toolchain.device.runner import BACKENDS  # one list: the runner checks settings.json against it
from toolchain.models.catalog import ModelEntry, check_quant, entry_from_gguf, lookup
from toolchain.models.gguf_reader import read_gguf
from toolchain.models.sources import WheelSource, availability, cached_path
from toolchain.plan import calibration
from toolchain.plan.boards import DEVICE_CLASSES, BoardSpec
from toolchain.plan.placement import DeviceMemory
from toolchain.plan.select import Option
from toolchain.plan.sizing import QUANT_FACTORS, SpeedBasis, normalize_isa

# Decode efficiency: the fraction of the planner's bandwidth figure (a measured read rate, else
# 0.7 x the peak) that llama.cpp's decode reaches, per device class and backend, with the fixed
# per-token overhead a (seconds) and its per-layer part b (PER_LAYER_S): overhead = a + b x layers.
# Sources:
#  - sbc-cpu/cpu, jetson/cuda, apple-silicon/metal: device-weighted least squares over
#    published-benchmarks.csv with a mild pull toward physical priors (plan/published.py; its
#    leave-one-device-out error and coverage are printed by bench/published_lodo.py): Raspberry Pi
#    4/400 llama-bench rows, Jetson AGX Orin CUDA rows (holohub #170), the Apple M1-M4 Metal table
#    (llama.cpp discussion #4167). With one device each, sbc-cpu's and jetson's rest on the prior.
#  - x86-cpu/cpu: sizing.md (x86 decode 85-95 % of a read-only STREAM, ggml-org/llama.cpp#25976).
#  - phone-cpu/cpu: lower (big.LITTLE, thermals): an estimate until measured.
#  - apple-silicon/cpu: M1 CPU decode >= 53.3 of 68.2 GB/s (llama.cpp#1642) = 1.1 x (0.7 x peak).
#  - jetson/cpu: no published multi-thread figure; the A78AE cores read ~10 GB/s each
#    single-threaded (board-facts.md, sbc-bench 87lq) and share the CPU complex's port to the
#    memory controller: an estimate of a third of the GPU-side figure, until measured.
#  - discrete-gpu/cuda and unified-gpu (DGX Spark, Ryzen AI Max): sizing.md's GPU figures (decode
#    reaches about the VRAM / unified-memory peak x 0.7 basis; launches cost well under a ms).
DEFAULT_EFFICIENCY: dict[tuple[str, str], tuple[float, float]] = {
    ("sbc-cpu", "cpu"): (0.855, 0.00148),
    ("x86-cpu", "cpu"): (0.85, 0.0015),
    ("phone-cpu", "cpu"): (0.70, 0.0020),
    ("jetson", "cpu"): (0.35, 0.0015),
    ("jetson", "cuda"): (0.835, 0.00314),
    ("apple-silicon", "cpu"): (1.10, 0.0015),
    ("apple-silicon", "metal"): (1.324, 0.00185),
    ("discrete-gpu", "cuda"): (1.0, 0.0003),
    ("unified-gpu", "cpu"): (0.6, 0.0015),  # estimate: a CPU complex reads well under a wide unified bus's peak
    ("unified-gpu", "cuda"): (1.1, 0.0005),
    ("unified-gpu", "vulkan"): (1.1, 0.0005),
}
GPU_FALLBACK = (0.50, 0.0100)  # opencl and unlisted pairs: no published rows, no prior
# Per-layer part of the fixed cost on CPUs (graph ops and thread barriers per layer), in seconds;
# fitted on this project's x86 measurements (bench/accuracy.py) and refined per device (the
# first-contact calibration measures it). GPUs: kernel launches and synchronisation per layer.
PER_LAYER_OVERHEAD_S = 0.00003
PER_LAYER_S: dict[tuple[str, str], float] = {
    ("jetson", "cuda"): 0.000240, ("apple-silicon", "metal"): 0.000144,
    ("discrete-gpu", "cuda"): 0.000010, ("unified-gpu", "cuda"): 0.000020, ("unified-gpu", "vulkan"): 0.000020,
}
# Measured / predicted tok/s on class defaults (a device never measured): the 10th-90th
# percentile of leave-one-device-out residuals over published-benchmarks.csv, widened by
# 1 + 1/sqrt(devices) + 1/sqrt(models) (plan/published.py; bench/published_lodo.py prints them).
# A class without a published device gets how far the priors miss on the known ones.
CLASS_INTERVAL: dict[tuple[str, str], tuple[float, float]] = {
    ("sbc-cpu", "cpu"): (0.78, 1.18),
    ("jetson", "cuda"): (0.76, 1.18),
    ("apple-silicon", "metal"): (0.78, 1.18),
}
UNMEASURED_CLASS_INTERVAL = (0.79, 1.27)  # a class with a prior but no published device
GPU_FALLBACK_INTERVAL = (0.4, 2.0)  # no prior either


def per_layer_default(dev_class: str, backend: str) -> float:
    return PER_LAYER_OVERHEAD_S if backend == "cpu" else PER_LAYER_S.get((dev_class, backend), 0.0)


def class_interval(dev_class: str, backend: str) -> tuple[float, float]:
    if (dev_class, backend) in CLASS_INTERVAL:
        return CLASS_INTERVAL[(dev_class, backend)]
    return UNMEASURED_CLASS_INTERVAL if (dev_class, backend) in DEFAULT_EFFICIENCY else GPU_FALLBACK_INTERVAL


# Prefill FLOPs per cycle per core with batched kernels; wide = SIMD dot products (AVX2/AVX-512,
# Armv8.2 dotprod/i8mm, SVE).
FLOPS_PER_CYCLE = {"wide": 32.0, "narrow": 8.0}
DEFAULT_MHZ = 2000.0
UNIFIED_MEMORY_CLASSES = ("jetson", "apple-silicon", "unified-gpu")  # the GPU uses the same RAM and bandwidth


PEAK_FRACTION = 0.7  # of a spec sheet's peak bandwidth, as the board database takes it without a measured read


@dataclass(frozen=True)
class Overrides:
    ram_bytes: int | None = None
    bandwidth_bytes_per_s: float | None = None
    peak_bandwidth_bytes_per_s: float | None = None  # a spec sheet's figure: the basis is PEAK_FRACTION of it
    device_class: str | None = None
    storage_read_bytes_per_s: float | None = None
    bandwidth_share: float = 1.0
    efficiency: float | None = None
    backend: str = "cpu"
    threads: int | None = None
    gpu_layers: int | None = None  # --gpu-layers: repeating layers on the accelerator (None: as many as fit)
    device_memory_bytes: int | None = None  # --device-memory: the accelerator's free memory, in place of the probe's


def build_basis(facts: HostFacts | None, board: BoardSpec | None, ov: Overrides,
                records: list[calibration.DeviceMeasurement] | None = None) -> tuple[Basis, SpeedBasis, int]:
    """Returns (basis shown to the user, speed basis for the model, decode threads).

    records: this device's stored measurements (default: loaded by the facts' fingerprint)."""
    if facts is None and board is None and (ov.ram_bytes is None or (ov.bandwidth_bytes_per_s is None and ov.peak_bandwidth_bytes_per_s is None)):
        raise BadInputError("no target, board or --ram/--bandwidth to plan for",
                            "give --target, --board ID, or --ram with --bandwidth (measured) or --peak-bandwidth (spec sheet)")
    if ov.backend not in BACKENDS:
        raise BadInputError(f"unknown backend {ov.backend!r}", f"use one of {', '.join(BACKENDS)}")
    if ov.device_class is not None and ov.device_class not in DEVICE_CLASSES:
        raise BadInputError(f"unknown device class {ov.device_class!r}", f"use one of {', '.join(DEVICE_CLASSES)}")
    dev_class = ov.device_class or (board.device_class if board else _device_class(facts))
    if ov.backend != "cpu" and board is not None and ov.backend not in board.backends:
        raise BadInputError(f"backend {ov.backend} is not usable on {board.id}", f"usable backends: {', '.join(board.backends)}")
    if ov.backend != "cpu" and facts is not None and not _facts_have_backend(facts, ov.backend):
        has = ", ".join(facts.runtime.llama_cpp_backends)
        raise BadInputError(f"backend {ov.backend} is not in {facts.target}'s llama-cpp-python (its llama.cpp has: {has})",
                            f"build it there with CMAKE_ARGS='{cmake_flags(ov.backend)}' pip install --no-cache-dir "
                            f"'llama-cpp-python=={facts.runtime.llama_cpp or ''}', or plan with --backend cpu")
    usable = _usable(facts, board, ov)
    if records is None:
        records = calibration.load(calibration.fingerprint(facts)) if facts is not None else []
    bw, bw_src = _bandwidth(facts, board, ov, dev_class, records)
    eta_default, overhead = DEFAULT_EFFICIENCY.get((dev_class, ov.backend), GPU_FALLBACK)
    eff = ov.efficiency if ov.efficiency is not None else eta_default
    eff_src = "--efficiency" if ov.efficiency is not None else f"default for {dev_class}/{ov.backend}"
    factors = dict(QUANT_FACTORS) if ov.backend == "cpu" else {}
    per_layer = per_layer_default(dev_class, ov.backend)
    per_row = 0.0  # class defaults were fitted without it: only a device's own calibration measures it
    fit = calibration.fit_device(records, eff, overhead, factors, per_layer_s=per_layer)
    mem_offset = 0
    confidence, interval = "class defaults", class_interval(dev_class, ov.backend)
    if fit.records and ov.efficiency is None:
        # family_factors are relative to the default eff; re-express them against the fitted one
        new_eff = eff * fit.eta_scale
        for t, f in fit.family_factors.items():
            factors[t] = f * eff / new_eff
        if fit.calibrated:
            # A calibrated device measured its kernel families one by one: a type it did not
            # measure keeps its default efficiency rather than the others' median (their kernels
            # differ: repacked or not, dequantised or not; Q4_1 is not Q4_0's repacked kernel).
            for t in set(factors) - set(fit.family_factors):
                factors[t] = factors[t] * eff / new_eff
        eff = new_eff
        overhead = fit.overhead_s if fit.overhead_s is not None else overhead
        per_layer = fit.per_layer_overhead_s if fit.per_layer_overhead_s is not None else per_layer
        per_row = fit.per_row_s if fit.per_row_s is not None else per_row
        mem_offset = fit.memory_offset_bytes
        eff_src += f"; {fit.source}"
        if ov.bandwidth_bytes_per_s is None and fit.bandwidth_bytes_per_s > 0:
            # the fit is in seconds per byte against the read rate its records were measured at:
            # today's probe (memchr moves +-20 % run to run) must not shift a measured device
            now = f"; the probe reads {bw / 1e9:.2f} GB/s now" if facts is not None and facts.bandwidth.read_bytes_per_s else ""
            bw = fit.bandwidth_bytes_per_s * ov.bandwidth_share
            bw_src = f"the read rate this device's {fit.records} measurement(s) are fitted against{now}"
        confidence = "calibrated" if fit.calibrated else "measured"
        interval = _fitted_interval(fit)
    threads = ov.threads or (facts.cpu.recommended_threads if facts else board.big_cores if board else 4)
    mhz = _max_mhz(facts, board) or DEFAULT_MHZ
    isa = normalize_isa((facts.cpu.isa or facts.cpu.features) if facts else board.features if board else [])
    wide = bool(isa & {"avx2", "avx512f", "dotprod", "i8mm", "sve"})
    flops = threads * mhz * 1e6 * FLOPS_PER_CYCLE["wide" if wide else "narrow"]
    storage = ov.storage_read_bytes_per_s or (facts.storage.read_bytes_per_s if facts else None) or (board.storage_read_bytes_per_s if board else None)
    basis = Basis(
        usable_memory_bytes=usable, bandwidth_bytes_per_s=bw, efficiency=round(eff, 4), bandwidth_source=bw_src,
        efficiency_source=eff_src, per_token_overhead_s=overhead, compute_flops_per_s=flops, storage_read_bytes_per_s=storage,
        backend=ov.backend, device_class=dev_class, memory_offset_bytes=mem_offset, per_layer_overhead_s=per_layer,
        confidence=confidence,
    )
    host: SpeedBasis | None = None
    if ov.backend != "cpu":  # layers left on the CPU (a partial offload) run on the CPU's basis
        host = build_basis(facts, board, replace(ov, backend="cpu", efficiency=None), records)[1]
    speed = SpeedBasis(bw, eff, flops, overhead, storage, tuple(sorted(factors.items())), isa=isa, backend=ov.backend,
                       per_layer_overhead_s=per_layer, memory_offset_bytes=mem_offset, interval=interval, per_row_s=per_row,
                       device_memory=device_memory(facts, ov, dev_class), gpu_layers=ov.gpu_layers, host=host)
    return basis, speed, threads


def cmake_flags(backend: str) -> str:
    """The CMake switch that builds llama.cpp with a backend (llama-cpp-python reads CMAKE_ARGS)."""
    from toolchain.deploy.provision import CMAKE_FLAGS

    return CMAKE_FLAGS.get(backend, "")


def device_memory(facts: HostFacts | None, ov: Overrides, dev_class: str) -> DeviceMemory:
    """What the accelerator holds for a plan: None on unified memory (the GPU reads the host's RAM,
    already sized), else --device-memory, else the free memory llama.cpp's registry reported."""
    dev = _runtime_device(facts, ov.backend)
    name = dev.name if dev else ""
    if ov.backend == "cpu":
        return DeviceMemory(None)
    if ov.device_memory_bytes is not None:
        return DeviceMemory(ov.device_memory_bytes, name, "--device-memory")
    if dev_class in UNIFIED_MEMORY_CLASSES or (dev is not None and dev.type == "igpu"):
        return DeviceMemory(None, name, "unified memory")
    if dev is not None and dev.memory_free_bytes > 0:
        return DeviceMemory(dev.memory_free_bytes, name, f"free on {dev.name} ({dev.description}), from llama.cpp's device registry")
    return DeviceMemory(None, name, "device memory unknown: all layers planned on it")


def _runtime_device(facts: HostFacts | None, backend: str) -> RuntimeDevice | None:
    from toolchain.device.runner import backend_of

    for d in facts.runtime.llama_cpp_devices if facts is not None else []:
        if d.type != "cpu" and backend_of(d.name) == backend:
            return d
    return None


def _fitted_interval(fit: calibration.DeviceFit) -> tuple[float, float]:
    """The 10th-90th percentile of the device's own residuals, at least +-(5 % + 25 %/sqrt(n)):
    a handful of records, or synthetic ones, do not show every way a real model differs."""
    w = 0.05 + 0.25 / math.sqrt(max(1, fit.records))
    return round(min(fit.spread[0], 1.0 - w), 3), round(max(fit.spread[1], 1.0 + w), 3)


def uncorrected_decode_s(basis: Basis, pred: Prediction) -> float:
    """The decode seconds per token the plan would have predicted on the class defaults, without
    this device's fit: the basis its measurement is stored against (calibration.measurement)."""
    if basis.efficiency_source.startswith("--efficiency"):
        return pred.decode_ms_per_token / 1000.0  # a given efficiency is never fitted
    eta, overhead = DEFAULT_EFFICIENCY.get((basis.device_class, basis.backend), GPU_FALLBACK)
    factors = QUANT_FACTORS if basis.backend == "cpu" else {}
    by_type = pred.bytes_by_type or {pred.kernel_family: pred.bytes_per_token - pred.streamed_bytes_per_token}
    mem = sum(b / (basis.bandwidth_bytes_per_s * eta * factors.get(t, 1.0)) for t, b in by_type.items())
    storage = basis.storage_read_bytes_per_s
    stream = pred.streamed_bytes_per_token / storage if pred.streamed_bytes_per_token and storage else 0.0
    if pred.n_layer:
        per_layer = per_layer_default(basis.device_class, basis.backend) * pred.n_layer  # the default, not this device's fit
    else:  # a plan written before predictions carried their layer count
        per_layer = max(0.0, pred.per_token_overhead_s - basis.per_token_overhead_s)
    return mem + stream + overhead + per_layer


def _usable(facts: HostFacts | None, board: BoardSpec | None, ov: Overrides) -> int:
    if ov.ram_bytes is not None:
        return int(ov.ram_bytes * 0.9)
    if facts is not None:
        return facts.memory.usable_bytes
    assert board is not None
    return int(board.ram_bytes * 0.8)  # OS, desktop and caches: a board database has no MemAvailable


def _bandwidth(facts: HostFacts | None, board: BoardSpec | None, ov: Overrides, dev_class: str,
               records: list[calibration.DeviceMeasurement] | None = None) -> tuple[float, str]:
    gpu_unified = ov.backend in ("cuda", "metal", "vulkan") and board is not None and dev_class in UNIFIED_MEMORY_CLASSES
    if ov.bandwidth_bytes_per_s is not None:
        bw, src = ov.bandwidth_bytes_per_s, "--bandwidth"
    elif ov.peak_bandwidth_bytes_per_s is not None:
        bw, src = ov.peak_bandwidth_bytes_per_s * PEAK_FRACTION, f"--peak-bandwidth x {PEAK_FRACTION:g} (a spec sheet's peak)"
    elif gpu_unified and board is not None:
        # the GPU reaches the memory controller's bandwidth; a CPU read probe does not show it
        bw, src = board.peak_bandwidth_bytes_per_s * 0.7, f"board database {board.id}: 70% of peak for the {ov.backend} GPU ({board.source})"
    elif facts is not None and facts.bandwidth.read_bytes_per_s:
        bw, src = facts.bandwidth.read_bytes_per_s, f"measured on the target ({facts.bandwidth.method})"
    elif board is not None and board.measured_read_bytes_per_s:
        bw, src = board.measured_read_bytes_per_s, f"board database {board.id}: measured read ({board.source})"
    elif board is not None:
        bw, src = board.peak_bandwidth_bytes_per_s * 0.7, f"board database {board.id}: 70% of peak ({board.source})"
    elif records and any(r.bandwidth_bytes_per_s > 0 for r in records):
        # a quick probe measures nothing, but the device's stored measurements carry the read rate
        # they were fitted against (the fit below expresses the plan against it)
        bw = statistics.median(r.bandwidth_bytes_per_s for r in records if r.bandwidth_bytes_per_s > 0)
        src = f"the read rate of this device's {len(records)} stored measurement(s) (a quick probe measures none)"
    else:
        raise BadInputError("no measured bandwidth for this target",
                            "run a full probe (without --quick), or ship once with one (its calibration and run are stored, and quick "
                            "probes plan from them), or set board: / --board, or --bandwidth")
    if ov.bandwidth_share != 1.0:
        bw *= ov.bandwidth_share
        src += f" x share {ov.bandwidth_share:g}"
    return bw, src


def _facts_have_backend(facts: HostFacts, backend: str) -> bool:
    names = {b.lower() for b in facts.runtime.llama_cpp_backends}
    if not names or not facts.runtime.llama_cpp:
        return True  # unknown (quick probe) or no llama_cpp yet (provisioning builds it for the plan's backend)
    return any(backend in n for n in names)


def _device_class(facts: HostFacts | None) -> str:
    if facts is not None and facts.os.kind == "android":
        return "phone-cpu"
    if facts is not None and facts.os.kind == "darwin":
        return "apple-silicon"
    if facts is not None and (facts.cpu.arch or "").startswith(("aarch64", "arm")):
        return "sbc-cpu"
    return "x86-cpu"


def _max_mhz(facts: HostFacts | None, board: BoardSpec | None) -> float | None:
    if facts is not None:
        freqs = [c.max_mhz for c in facts.cpu.clusters if c.max_mhz]
        if freqs:
            return max(freqs)
    return board.max_mhz if board else None


def build_options(
    catalog: dict[str, ModelEntry], sources: dict[tuple[str, str], WheelSource], *, models: tuple[str, ...] = (),
    quants: tuple[str, ...] = (), paths: tuple[Path, ...] = (),
) -> list[Option]:
    """Every (model, quant) to consider: catalog quants plus locally cached derived files."""
    wanted_q = tuple(check_quant(q) for q in quants)
    options: list[Option] = []
    for p in paths:
        entry = entry_from_gguf(p)
        q = next(iter(entry.quants))
        options.append(Option(entry, q, entry.quants[q].file_bytes, "local file", entry.local))
    ids = [lookup(catalog, m).id for m in models] if models else ([] if paths else list(catalog))
    for mid in ids:
        entry = catalog[mid]
        qnames = set(entry.quants)
        cache_dir = cached_path(mid, "X").parent
        if cache_dir.is_dir():
            qnames |= {f.stem for f in cache_dir.glob("*.gguf")}
        qnames |= {q for (m, q) in sources if m == mid}
        for q in sorted(qnames):
            if wanted_q and q not in wanted_q:
                continue
            how = availability(entry, q, sources)
            local = read_gguf(cached_path(mid, q)) if how == "cached" else None
            qe = entry.quants.get(q)
            src = sources.get((mid, q))
            size = local.size_bytes if local else (src.file_bytes if src and src.file_bytes else qe.file_bytes if qe else None)
            options.append(Option(entry, q, size, how, local))
    if wanted_q and not options:
        raise BadInputError(f"no candidate has quant {', '.join(wanted_q)}", "drop --quant or pick another")
    return options
