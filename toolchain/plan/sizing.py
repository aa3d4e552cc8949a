"""Memory and speed model (pure functions). Formulas and their sources: ../shared/reference/sizing.md.

Memory (what the runner's process holds at its peak, VmHWM):
  runtime (python, numpy, llama.cpp, vocabulary tables) + the mmapped weights (every page is
  touched) + CPU_REPACK copies of some tensors (llama.cpp re-lays them out in anonymous memory;
  the file pages stay mapped but can be dropped) + the KV cache (llama.cpp clears it at init, so all of it is
  resident from the start) + the compute graph buffer of the largest batch actually run.
Decode time per token = bytes read per token / (bandwidth x efficiency) + a fixed per-token
overhead; efficiency depends on the backend, the quant family and the device class.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from toolchain.models.catalog import Arch, ModelEntry
from toolchain.models.gguf_reader import GGUFInfo
from toolchain.plan.placement import DeviceMemory

# (block size, bytes per block) per ggml type; mirrors gguf.GGML_QUANT_SIZES (kept here so the
# planner stays import-light and pure).
TYPE_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
    "Q5_1": (32, 24), "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144),
    "Q5_K": (256, 176), "Q6_K": (256, 210), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136), "TQ1_0": (256, 54),
    "TQ2_0": (256, 66), "MXFP4": (32, 17),
}
KV_TYPES = ("f16", "q8_0", "q4_0")
_KV_GGML = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
# k-quant rows must be a multiple of 256; llama.cpp falls back to these types otherwise.
_FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL",
             "TQ1_0": "Q4_0", "TQ2_0": "Q4_0"}
MiB = 1 << 20
UBATCH = 512  # the runner's n_batch/n_ubatch
KV_PAD = 256  # llama.cpp rounds KV cells up to this

# Runtime memory of the runner's process before weights, KV and graph: python + numpy + the
# llama.cpp libraries + backend init (RUNTIME_BASE_BYTES), plus the vocabulary and metadata
# tables, which scale with the GGUF header (token strings, scores, merges). Fitted on dry loads
# (toolchain/dryload.py VmHWM) of SmolLM2-135M (1.79 MB header -> 64.3 MB), Gemma-3-270M
# (6.53 MB -> 96.3 MB) on x86-64 / llama-cpp-python 0.3.36; bench/accuracy.py checks it
# against the synthetic 0.5B/1B/3B files it holds out.
RUNTIME_BASE_BYTES = 52_200_000
HEADER_RESIDENT_FACTOR = 6.75
HEADER_BYTES_PER_VOCAB = 28.0  # header size per vocabulary entry when no file is at hand (catalog)


def rowsize(type_name: str, n: int) -> int:
    block, size = TYPE_SIZES[type_name]
    return math.ceil(n / block) * size


@dataclass(frozen=True)
class Weights:
    total_bytes: int  # resident when fully loaded
    per_token_bytes: int  # streamed per decoded token
    token_embd_bytes: int
    output_bytes: int
    estimated: bool
    basis: str
    repackable: tuple[tuple[str, int], ...] = ()  # (ggml type, bytes) of 2-D tensors llama.cpp may repack
    header_bytes: int = 0  # GGUF metadata (vocabulary) bytes; 0: estimate from n_vocab
    dominant_type: str = ""  # the ggml type holding most per-token bytes (the kernel family)
    per_token_types: tuple[tuple[str, int], ...] = ()  # per_token_bytes split by ggml type (kernels differ)
    per_token_rows: int = 0  # matrix rows the matmuls of one token produce (each costs a little beyond its bytes)


def weights_from_gguf(info: GGUFInfo, arch: Arch) -> Weights:
    per_token = info.weights_bytes - info.token_embd_bytes
    if info.output_bytes == 0:  # tied: the embedding table is also the output projection
        per_token += info.token_embd_bytes
    if arch.n_expert and arch.n_expert_used:
        exp = sum(t.n_bytes for t in info.tensors if "_exps" in t.name)
        per_token -= int(exp * (1 - arch.n_expert_used / arch.n_expert))
    # token_embd is a row gather (get_rows): llama.cpp never repacks it, even when tied
    rep = tuple((t.type_name, t.n_bytes) for t in info.tensors
                if t.name != "token_embd.weight" and t.name.endswith(".weight") and t.n_elements > arch.n_embd)
    used = arch.n_expert_used / arch.n_expert if arch.n_expert and arch.n_expert_used else 1.0
    by: dict[str, int] = {}
    for t in info.tensors:
        if t.name == "token_embd.weight" and info.output_bytes:
            continue  # a row gather, unless it doubles as the output projection
        by[t.type_name] = by.get(t.type_name, 0) + int(t.n_bytes * (used if "_exps" in t.name else 1.0))
    rows = 0
    for t in info.tensors:
        if t.n_elements <= t.row_length or (t.name == "token_embd.weight" and info.output_bytes):
            continue  # norms and biases; the embedding is a row gather unless it is also the output
        rows += int(t.n_rows * (used if "_exps" in t.name else 1.0))
    return Weights(info.weights_bytes, per_token, info.token_embd_bytes, info.output_bytes, False,
                   "tensor table of the GGUF", rep, max(0, info.size_bytes - info.weights_bytes),
                   _dominant(rep or (("F16", 1),)), tuple(sorted(by.items())), rows)


def weights_estimate(entry: ModelEntry, quant: str) -> Weights:
    """Tensor table built from the architecture and llama.cpp's quant recipe (marked estimated)."""
    a = entry.arch
    heads, kv_heads, ffs = a.per_layer(a.n_head), a.per_layer(a.n_head_kv), a.per_layer(a.n_ff)
    embd_type, out_type = _embedding_types(quant, a.tied_embeddings)
    token_embd = rowsize(_fit(embd_type, a.n_embd), a.n_embd) * a.n_vocab
    output = 0 if a.tied_embeddings else rowsize(_fit(out_type, a.n_embd), a.n_embd) * a.n_vocab
    experts = 0
    n_exp = max(1, a.n_expert)
    rep: dict[str, int] = {}

    def add(t: str, row: int, rows: int, mult: int = 1) -> int:
        t = _fit(t, row)
        n = rowsize(t, row) * rows * mult
        rep[t] = rep.get(t, 0) + n
        return n

    # layers alike in shape and recipe are sized once (a plan sizes hundreds of candidates)
    kinds = Counter((heads[il], kv_heads[il], ffs[il], _layer_type(quant, "attn", il, a.n_layer),
                     _layer_type(quant, "attn_v", il, a.n_layer), _layer_type(quant, "ffn_down", il, a.n_layer))
                    for il in range(a.n_layer))
    layers = 0
    used = a.n_expert_used or n_exp
    rows = a.n_vocab  # the output projection (tied or not)
    for (n_h, n_kv, ff, t_attn, t_v, t_down), count in kinds.items():
        rows += count * ((n_h + 2 * n_kv) * a.head_dim + a.n_embd + used * (2 * ff + a.n_embd))
        q_dim, kv_dim = n_h * a.head_dim, n_kv * a.head_dim
        layers += add(t_attn, a.n_embd, q_dim + kv_dim, count) + add(t_v, a.n_embd, kv_dim, count) + add(t_attn, q_dim, a.n_embd, count)
        ffn = add(t_attn, a.n_embd, 2 * ff, n_exp * count) + add(t_down, ff, a.n_embd, n_exp * count)
        if a.n_expert:
            experts += ffn
        else:
            layers += ffn
        layers += 2 * a.n_embd * 4 * count  # norms stay F32
    if output:
        rep[_fit(out_type, a.n_embd)] = rep.get(_fit(out_type, a.n_embd), 0) + output
    total = token_embd + output + layers + experts
    per_token = total - token_embd + (token_embd if a.tied_embeddings else 0)
    if a.n_expert and a.n_expert_used:
        per_token -= int(experts * (1 - a.n_expert_used / a.n_expert))
    reps = tuple(rep.items())
    by = dict(rep)
    if a.tied_embeddings:
        et = _fit(embd_type, a.n_embd)
        by[et] = by.get(et, 0) + token_embd
    if a.n_expert and a.n_expert_used and experts:  # scale every type by the per-token share
        share = per_token / max(1, sum(by.values()))
        by = {t: int(n * share) for t, n in by.items()}
    return Weights(total, per_token, token_embd, output, True, f"estimated from architecture + {quant} recipe", reps, 0,
                   _dominant(reps), tuple(sorted(by.items())), rows)


def weights_from_file_size(entry: ModelEntry, quant: str, file_bytes: int) -> Weights:
    """Published file size: the tensor data is the file less its metadata (scale the estimate)."""
    est = weights_estimate(entry, quant)
    header = int(HEADER_BYTES_PER_VOCAB * entry.arch.n_vocab)
    scale = max(1, file_bytes - header) / max(1, est.total_bytes)
    return Weights(
        file_bytes - header, int(est.per_token_bytes * scale), int(est.token_embd_bytes * scale),
        int(est.output_bytes * scale), False, "published file size (tensor split estimated)",
        tuple((t, int(n * scale)) for t, n in est.repackable), header, est.dominant_type,
        tuple((t, int(n * scale)) for t, n in est.per_token_types), est.per_token_rows,
    )


def _dominant(pairs: tuple[tuple[str, int], ...]) -> str:
    by: dict[str, int] = {}
    for t, n in pairs:
        by[t] = by.get(t, 0) + n
    return max(by, key=lambda k: by[k])


def _fit(type_name: str, row: int) -> str:
    block = TYPE_SIZES[type_name][0]
    return type_name if row % block == 0 else _FALLBACK.get(type_name, "Q8_0")


_BASE = {
    "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_0": "Q5_0",
    "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "IQ4_XS": "IQ4_XS", "Q3_K_M": "Q3_K",
    "Q3_K_S": "Q3_K", "Q2_K": "Q2_K", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0",
}


def _embedding_types(quant: str, tied: bool) -> tuple[str, str]:
    base = _BASE[quant]
    if quant in ("F16", "BF16", "Q8_0"):
        return base, base
    out = "Q6_K"  # llama.cpp gives output.weight (or the tied embedding) Q6_K for lower types
    if tied:
        return out, out
    embd = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "TQ1_0": "Q4_K", "TQ2_0": "Q4_K"}.get(quant, base)
    return embd, out


def _more_bits(il: int, n: int) -> bool:
    return il < n // 8 or il >= 7 * n // 8 or (il - n // 8) % 3 == 2


def _layer_type(quant: str, role: str, il: int, n: int) -> str:
    base = _BASE[quant]
    if role == "attn_v":
        if quant in ("Q4_K_M", "Q5_K_M"):
            return "Q6_K" if _more_bits(il, n) else base
        if quant == "Q4_K_S" and il < 4:
            return "Q5_K"
        if quant == "Q3_K_M":
            return "Q5_K" if il < 2 else "Q4_K"
        if quant == "Q2_K":
            return "Q4_K"
    if role == "ffn_down":
        if quant in ("Q4_K_M", "Q5_K_M"):
            return "Q6_K" if _more_bits(il, n) else base
        if quant == "Q3_K_M":
            return "Q5_K" if il < n // 16 else "Q4_K"
        if quant == "Q2_K":
            return "Q3_K"
    return base


# --- CPU_REPACK -----------------------------------------------------------------------------

# Which ggml types llama.cpp's CPU backend re-lays out for its GEMM kernels, by the ISA the
# build can use: ggml/src/ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type
# (llama-cpp-python 0.3.36's vendored llama.cpp). A repacked tensor is copied into anonymous
# memory of the same size while its file pages stay mapped, so it counts twice in RSS.
_REPACK: dict[str, tuple[frozenset[str], ...]] = {
    "Q4_0": (frozenset({"avx2"}), frozenset({"i8mm"}), frozenset({"dotprod"})),
    "Q4_K": (frozenset({"avx2"}), frozenset({"i8mm"}), frozenset({"dotprod"})),
    "Q2_K": (frozenset({"avx512f"}),),
    "Q5_K": (frozenset({"dotprod"}), frozenset({"i8mm"})),
    "Q6_K": (frozenset({"dotprod"}), frozenset({"i8mm"})),
    "IQ4_NL": (frozenset({"avx2"}), frozenset({"dotprod"})),
    "MXFP4": (frozenset({"avx2"}), frozenset({"dotprod"})),
    "Q8_0": (frozenset({"dotprod"}), frozenset({"i8mm"})),
}
_ISA_ALIASES = {"asimddp": "dotprod", "avx512": "avx512f", "svei8mm": "i8mm"}


def normalize_isa(features: list[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    """cpuinfo flags or llama.cpp's names -> the names _REPACK uses."""
    out = set()
    for f in features:
        f = f.lower()
        out.add(_ISA_ALIASES.get(f, f))
    x86_arm = out & {"avx2", "dotprod", "i8mm"}
    if "avx512f" in out and not x86_arm:
        out.add("avx2")  # AVX-512 CPUs have AVX2
    return frozenset(out)


def repack_bytes(w: Weights, isa: frozenset[str], backend: str = "cpu") -> int:
    if backend != "cpu" or not isa:
        return 0
    total = 0
    for t, n in w.repackable:
        if any(need <= isa for need in _REPACK.get(t, ())):
            total += n
    return total


# --- KV cache -------------------------------------------------------------------------------


def _pad(n: int, to: int = KV_PAD) -> int:
    return (n + to - 1) // to * to


def swa_layers(arch: Arch) -> list[bool]:
    if not arch.sliding_window or not arch.swa_pattern:
        return [False] * arch.n_layer
    p = arch.swa_pattern
    return [il % p < p - 1 for il in range(arch.n_layer)]


def kv_cells(arch: Arch, ctx: int, swa_full: bool = False, ubatch: int = UBATCH) -> list[int]:
    """Cells per layer: full layers hold the padded context, sliding-window layers their window
    plus one ubatch (llama-kv-cache-iswa.cpp), unless swa_full."""
    full = _pad(ctx)
    win = arch.sliding_window or 0
    return [min(full, _pad(win + ubatch)) if swa and not swa_full else full for swa in swa_layers(arch)]


def kv_cache_bytes(arch: Arch, ctx: int, kv_type: str, swa_full: bool = False) -> int:
    t = _KV_GGML[kv_type]
    kinds = Counter(zip(kv_cells(arch, ctx, swa_full), arch.per_layer(arch.n_head_kv), strict=True))
    return sum(count * cells * rowsize(t, arch.head_dim * kvh) * 2 for (cells, kvh), count in kinds.items())


def kv_read_bytes(arch: Arch, depth: int, kv_type: str) -> int:
    """KV bytes read per decoded token at a context depth (SWA layers read at most their window)."""
    t = _KV_GGML[kv_type]
    swa_cells = min(depth, arch.sliding_window or depth)
    kinds = Counter(zip(swa_layers(arch), arch.per_layer(arch.n_head_kv), strict=True))
    return sum(count * (swa_cells if swa else depth) * rowsize(t, arch.head_dim * kvh) * 2 for (swa, kvh), count in kinds.items())


# --- compute graph --------------------------------------------------------------------------


def compute_buffer_bytes(arch: Arch, n_tokens: int, n_kv: int, flash_attn: bool) -> int:
    """Graph buffer for one ubatch of n_tokens attending to n_kv cells with one output row (the
    runner reads only the last token's logits). Fitted to llama.cpp's own reserve (dry loads with
    n_outputs_max=1 of SmolLM2, Gemma-3-270M and a 0.5B llama, ctx 256-8192, within ~10%):
    without flash attention the f32 KQ scores of every head plus the mask dominate; with it the
    f16 mask and the FFN intermediates."""
    e, u = arch.n_embd, min(n_tokens, n_kv)  # a batch never exceeds the context
    h = max(arch.per_layer(arch.n_head))
    ff = max(arch.per_layer(arch.n_ff))
    if flash_attn:
        return 2 * u * n_kv + 4 * u * (4 * e + 3 * ff) + 4 * arch.n_vocab
    return 4 * u * n_kv * (h + 1) + int(4 * u * 5.5 * max(e, h * arch.head_dim)) + 4 * arch.n_vocab


def runtime_bytes(w: Weights, arch: Arch) -> int:
    header = w.header_bytes or int(HEADER_BYTES_PER_VOCAB * arch.n_vocab)
    return RUNTIME_BASE_BYTES + int(HEADER_RESIDENT_FACTOR * header)


@dataclass(frozen=True)
class Memory:
    weights_bytes: int  # mmapped tensor data, all touched
    repack_bytes: int  # anonymous copies made by CPU_REPACK
    kv_bytes: int
    compute_bytes: int  # graph buffer at the worst case: a full ubatch at full context
    runtime_bytes: int
    peak_bytes: int  # what the plan needs resident at full context with a full batch (decides fits)
    bench_bytes: int  # VmHWM of the runner's bench (short prompts, shallow; repacked pages twice)


def memory(w: Weights, arch: Arch, ctx: int, kv_type: str, *, isa: frozenset[str], backend: str = "cpu",
           bench_prompt_tokens: int = 32, bench_depth: int = 128, swa_full: bool = False) -> Memory:
    flash = kv_type != "f16"
    kv = kv_cache_bytes(arch, ctx, kv_type, swa_full)
    full = compute_buffer_bytes(arch, UBATCH, _pad(ctx), flash)
    bench = compute_buffer_bytes(arch, bench_prompt_tokens, _pad(min(ctx, bench_depth)), flash)
    rep = repack_bytes(w, isa, backend)
    rt = runtime_bytes(w, arch)
    base = w.total_bytes + kv + rt
    # A repacked tensor's file pages stay mapped (VmHWM counts them twice on a roomy machine) but
    # are clean and never read again: under memory pressure the kernel drops them, so the copy
    # replaces them in what the plan needs.
    return Memory(w.total_bytes, rep, kv, full, rt, base + full, base + rep + bench)


# --- speed ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedBasis:
    bandwidth_bytes_per_s: float
    efficiency: float
    compute_flops_per_s: float  # sustained prefill FLOP rate at the chosen threads
    per_token_overhead_s: float
    storage_read_bytes_per_s: float | None = None
    quant_factors: tuple[tuple[str, float], ...] = ()  # per kernel family, multiplies efficiency
    isa: frozenset[str] = frozenset()  # llama.cpp ISA names of the target CPU (decides CPU_REPACK)
    backend: str = "cpu"
    per_layer_overhead_s: float = 0.0  # graph ops and thread barriers, per layer per token
    memory_offset_bytes: int = 0  # this device's measured-minus-predicted RSS, added to predictions
    interval: tuple[float, float] = (1.0, 1.0)  # measured / predicted tok/s expected within (low, high)
    per_row_s: float = 0.0  # per matrix row a token's matmuls produce (0: not known; the calibration measures it)
    # placement on an accelerator backend: what its memory holds, a --gpu-layers override, and the
    # CPU's own basis for the layers a partial offload leaves on the host
    device_memory: DeviceMemory = field(default_factory=lambda: DeviceMemory(None))
    gpu_layers: int | None = None
    host: SpeedBasis | None = None

    def factor(self, family: str) -> float:
        return dict(self.quant_factors).get(family, 1.0)

    def overhead_s(self, n_layer: int) -> float:
        return self.per_token_overhead_s + self.per_layer_overhead_s * n_layer


# Relative decode efficiency per ggml type, least squares over the Raspberry Pi 4 llama-bench rows
# of published-benchmarks.csv (sensura-san/llm-bench: Gemma-3-1B/270M, Llama-3.2-1B, Qwen2.5-0.5B,
# Qwen3-0.6B in every quant; the per-family fit of plan/published.py gives close values). Types the
# rows do not cover default to 1.0; a device's own measurements replace these (fit_device).
QUANT_FACTORS: dict[str, float] = {
    "F16": 1.035, "Q8_0": 1.0, "Q6_K": 1.033, "Q5_K": 1.011, "Q5_0": 1.003, "Q5_1": 1.007, "Q4_K": 1.04,
    "Q4_0": 1.0, "Q4_1": 0.992, "IQ4_NL": 0.988, "Q3_K": 0.974, "IQ3_S": 0.83, "IQ3_XXS": 0.82,
}


def decode_seconds(bytes_per_token: float, basis: SpeedBasis, *, family: str = "", n_layer: int = 0,
                   streamed_bytes: float = 0.0, by_type: dict[str, float] | None = None, rows: int = 0) -> float:
    """RAM-resident bytes at bandwidth x efficiency (per ggml type when the split is given: the
    kernels differ), plus streamed bytes at the storage read rate (mmap faults them in every
    token: no overlap assumed), plus the fixed overhead, plus a cost per matrix row (a dot
    product's set-up and its output: why a narrow model reads its bytes slower than a wide one)."""
    split = by_type or {family: bytes_per_token}
    mem = sum(b / (basis.bandwidth_bytes_per_s * basis.efficiency * basis.factor(t)) for t, b in split.items())
    stream = streamed_bytes / basis.storage_read_bytes_per_s if streamed_bytes and basis.storage_read_bytes_per_s else 0.0
    return mem + stream + basis.overhead_s(n_layer) + basis.per_row_s * rows


def active_params(entry: ModelEntry) -> int:
    a = entry.arch
    if a.n_expert and a.n_expert_used:
        ffn = sum(3 * a.n_embd * f for f in a.per_layer(a.n_ff)) * a.n_expert
        return int(entry.params - ffn * (1 - a.n_expert_used / a.n_expert))
    return entry.params


def prefill_tokens_per_s(params_active: int, basis: SpeedBasis) -> float:
    # Prefill is compute-bound: 2 FLOPs per active parameter per token.
    return basis.compute_flops_per_s / (2.0 * max(1, params_active))
