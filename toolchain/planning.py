"""Glue for the planner: facts + board database + overrides + calibration -> basis; catalog +
local files -> options. The decisions themselves stay pure in planner.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolchain.boards import BoardSpec
from toolchain.calibration import Correction
from toolchain.catalog import ModelEntry, check_quant, entry_from_gguf, lookup
from toolchain.errors import BadInputError
from toolchain.gguf_file import read_gguf
from toolchain.model_sources import WheelSource, availability, cached_path
from toolchain.models import Basis, HostFacts
from toolchain.planner import Option
from toolchain.sizing import SpeedBasis

DEFAULT_EFFICIENCY = {"sbc-cpu": 0.85, "phone-cpu": 0.7, "x86-cpu": 0.85, "jetson": 0.63, "apple-silicon": 0.6}
# Sustained GEMV FLOPs per cycle per core for quantized decode (dot-product kernels); fitted so
# that small models (compute/overhead-bound) are not predicted as pure bandwidth problems.
FLOPS_PER_CYCLE = {"wide": 8.0, "narrow": 4.0}
DEFAULT_OVERHEAD_S = 0.0004
DEFAULT_MHZ = 2000.0


@dataclass(frozen=True)
class Overrides:
    ram_bytes: int | None = None
    bandwidth_bytes_per_s: float | None = None
    storage_read_bytes_per_s: float | None = None
    bandwidth_share: float = 1.0
    efficiency: float | None = None
    backend: str = "cpu"
    threads: int | None = None


def build_basis(facts: HostFacts | None, board: BoardSpec | None, ov: Overrides, corr: Correction) -> tuple[Basis, SpeedBasis, int]:
    """Returns (basis shown to the user, speed basis for the model, decode threads)."""
    if facts is None and board is None and (ov.ram_bytes is None or ov.bandwidth_bytes_per_s is None):
        raise BadInputError("no target, board or --ram/--bandwidth to plan for", "give --target, --board ID, or both --ram and --bandwidth")
    # memory
    if ov.ram_bytes is not None:
        usable = int(ov.ram_bytes * 0.9)
    elif facts is not None:
        usable = facts.memory.usable_bytes
    else:
        assert board is not None
        usable = int(board.ram_bytes * 0.8)  # OS, desktop and caches: a board database has no MemAvailable
    # bandwidth
    if ov.bandwidth_bytes_per_s is not None:
        bw, bw_src = ov.bandwidth_bytes_per_s, "--bandwidth"
    elif facts is not None and facts.bandwidth.read_bytes_per_s:
        bw, bw_src = facts.bandwidth.read_bytes_per_s, f"measured on the target ({facts.bandwidth.method})"
    elif board is not None and board.measured_read_bytes_per_s:
        bw, bw_src = board.measured_read_bytes_per_s, f"board database {board.id}: measured read ({board.source})"
    elif board is not None:
        bw, bw_src = board.peak_bandwidth_bytes_per_s * 0.7, f"board database {board.id}: 70% of peak ({board.source})"
    else:
        raise BadInputError("no memory bandwidth known for this target", "run a full probe (without --quick), or give --board or --bandwidth")
    if ov.bandwidth_share != 1.0:
        bw *= ov.bandwidth_share
        bw_src += f" x share {ov.bandwidth_share:g}"
    dev_class = board.device_class if board else _device_class(facts)
    if ov.backend != "cpu" and board is not None and ov.backend not in board.backends:
        raise BadInputError(f"backend {ov.backend} is not usable on {board.id}", f"usable backends: {', '.join(board.backends)}")
    eff_default = DEFAULT_EFFICIENCY.get(dev_class, 0.8) if ov.backend == "cpu" else DEFAULT_EFFICIENCY.get(dev_class, 0.6)
    eff = ov.efficiency if ov.efficiency is not None else eff_default
    eff_src = "--efficiency" if ov.efficiency is not None else f"default for {dev_class} ({ov.backend})"
    # threads and compute
    threads = ov.threads or (facts.cpu.recommended_threads if facts else board.big_cores if board else 4)
    mhz = _max_mhz(facts, board) or DEFAULT_MHZ
    feats = set(facts.cpu.features if facts else board.features if board else [])
    wide = bool(feats & {"avx2", "avx512f", "dotprod", "asimddp", "i8mm", "sve"})
    flops = threads * mhz * 1e6 * FLOPS_PER_CYCLE["wide" if wide else "narrow"]
    overhead = DEFAULT_OVERHEAD_S
    factor = 1.0 if ov.efficiency is not None else corr.factor
    if factor != 1.0:
        eff, flops, overhead = eff / factor, flops / factor, overhead * factor
        eff_src += f"; {corr.source}"
    storage = ov.storage_read_bytes_per_s or (facts.storage.read_bytes_per_s if facts else None) or (board.storage_read_bytes_per_s if board else None)
    basis = Basis(
        usable_memory_bytes=usable, bandwidth_bytes_per_s=bw, efficiency=round(eff, 4), bandwidth_source=bw_src,
        efficiency_source=eff_src, per_token_overhead_s=overhead, compute_flops_per_s=flops, storage_read_bytes_per_s=storage,
    )
    return basis, SpeedBasis(bw, eff, flops, overhead, storage), threads


def _device_class(facts: HostFacts | None) -> str:
    if facts is not None and facts.os.kind == "android":
        return "phone-cpu"
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
