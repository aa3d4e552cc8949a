"""Memory and speed model (pure functions). Formulas and their sources: ../shared/reference/sizing.md.

Memory = resident weights (sum of the tensor table) + KV cache (per layer, GQA, sliding-window
layers holding only their window, real block sizes of the KV type) + compute buffer + runtime.
Decode time per token = bytes read per token / (bandwidth x efficiency), or the compute time
when that is larger, + a fixed per-token overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolchain.catalog import Arch, ModelEntry
from toolchain.gguf_file import GGUFInfo

# (block size, bytes per block) per ggml type; mirrors gguf.GGML_QUANT_SIZES (kept here so the
# planner stays import-light and pure).
TYPE_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
    "Q5_1": (32, 24), "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144),
    "Q5_K": (256, 176), "Q6_K": (256, 210), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136), "TQ1_0": (256, 54),
    "TQ2_0": (256, 66),
}
KV_TYPES = ("f16", "q8_0", "q4_0")
_KV_GGML = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
# k-quant rows must be a multiple of 256; llama.cpp falls back to these types otherwise.
_FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL",
             "TQ1_0": "Q4_0", "TQ2_0": "Q4_0"}
MiB = 1 << 20
UBATCH = 512  # the runner's n_batch/n_ubatch
RUNTIME_OVERHEAD_BYTES = 96 * MiB  # python + llama.cpp libraries + allocator slack, fitted on the runner


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


def weights_from_gguf(info: GGUFInfo, arch: Arch) -> Weights:
    per_token = info.weights_bytes - info.token_embd_bytes
    if info.output_bytes == 0:  # tied: the embedding table is also the output projection
        per_token += info.token_embd_bytes
    if arch.n_expert and arch.n_expert_used:
        exp = sum(t.n_bytes for t in info.tensors if "_exps" in t.name)
        per_token -= int(exp * (1 - arch.n_expert_used / arch.n_expert))
    return Weights(info.weights_bytes, per_token, info.token_embd_bytes, info.output_bytes, False, "tensor table of the GGUF")


def weights_estimate(entry: ModelEntry, quant: str) -> Weights:
    """Tensor table built from the architecture and llama.cpp's quant recipe (marked estimated)."""
    a = entry.arch
    heads, kv_heads, ffs = a.per_layer(a.n_head), a.per_layer(a.n_head_kv), a.per_layer(a.n_ff)
    embd_type, out_type = _embedding_types(quant, a.tied_embeddings)
    token_embd = rowsize(_fit(embd_type, a.n_embd), a.n_embd) * a.n_vocab
    output = 0 if a.tied_embeddings else rowsize(_fit(out_type, a.n_embd), a.n_embd) * a.n_vocab
    layers = 0
    experts = 0
    n_exp = max(1, a.n_expert)
    for il in range(a.n_layer):
        q_dim, kv_dim = heads[il] * a.head_dim, kv_heads[il] * a.head_dim
        t_attn = _layer_type(quant, "attn", il, a.n_layer)
        t_v = _layer_type(quant, "attn_v", il, a.n_layer)
        t_down = _layer_type(quant, "ffn_down", il, a.n_layer)
        layers += rowsize(_fit(t_attn, a.n_embd), a.n_embd) * (q_dim + kv_dim)  # q, k
        layers += rowsize(_fit(t_v, a.n_embd), a.n_embd) * kv_dim
        layers += rowsize(_fit(t_attn, q_dim), q_dim) * a.n_embd  # attn_output
        ffn = 2 * rowsize(_fit(t_attn, a.n_embd), a.n_embd) * ffs[il] + rowsize(_fit(t_down, ffs[il]), ffs[il]) * a.n_embd
        if a.n_expert:
            experts += ffn * n_exp
        else:
            layers += ffn
        layers += 2 * a.n_embd * 4  # norms stay F32
    total = token_embd + output + layers + experts
    per_token = total - token_embd + (token_embd if a.tied_embeddings else 0)
    if a.n_expert and a.n_expert_used:
        per_token -= int(experts * (1 - a.n_expert_used / a.n_expert))
    return Weights(total, per_token, token_embd, output, True, f"estimated from architecture + {quant} recipe")


def weights_from_file_size(entry: ModelEntry, quant: str, file_bytes: int) -> Weights:
    """Published file size: the tensor data is the file less its metadata (scale the estimate)."""
    est = weights_estimate(entry, quant)
    scale = file_bytes / max(1, est.total_bytes)
    return Weights(
        file_bytes, int(est.per_token_bytes * scale), int(est.token_embd_bytes * scale), int(est.output_bytes * scale),
        False, "published file size (tensor split estimated)",
    )


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


# --- KV cache -------------------------------------------------------------------------------


def _pad(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def swa_layers(arch: Arch) -> list[bool]:
    if not arch.sliding_window or not arch.swa_pattern:
        return [False] * arch.n_layer
    p = arch.swa_pattern
    return [il % p < p - 1 for il in range(arch.n_layer)]


def kv_cache_bytes(arch: Arch, ctx: int, kv_type: str) -> int:
    t = _KV_GGML[kv_type]
    kv_heads = arch.per_layer(arch.n_head_kv)
    total = 0
    for il, swa in enumerate(swa_layers(arch)):
        cells = _pad(min(ctx, (arch.sliding_window or 0) + UBATCH)) if swa else _pad(ctx)
        row = arch.head_dim * kv_heads[il]
        total += cells * (rowsize(t, row) * 2)
    return total


def kv_read_bytes(arch: Arch, depth: int, kv_type: str) -> int:
    """KV bytes read per decoded token at a context depth (SWA layers read at most their window)."""
    t = _KV_GGML[kv_type]
    kv_heads = arch.per_layer(arch.n_head_kv)
    total = 0
    for il, swa in enumerate(swa_layers(arch)):
        cells = min(depth, arch.sliding_window or depth) if swa else depth
        total += cells * rowsize(t, arch.head_dim * kv_heads[il]) * 2
    return total


def compute_buffer_bytes(arch: Arch, ctx: int, flash_attn: bool) -> int:
    """Dominant CPU compute-buffer terms for one ubatch (sizing.md: ollama/gguf-parser formula)."""
    e, v, u = arch.n_embd, arch.n_vocab, UBATCH
    h = max(arch.per_layer(arch.n_head))
    ff = max(arch.per_layer(arch.n_ff))
    kq = 2 * ctx * u if flash_attn else 4 * u * ctx * h
    return max(4 * u * v, kq + 4 * u * (e + ctx), 4 * u * ff * 3) + 4 * u * (e + ctx)


# --- speed ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedBasis:
    bandwidth_bytes_per_s: float
    efficiency: float
    compute_flops_per_s: float  # sustained decode/prefill FLOP rate at the chosen threads
    per_token_overhead_s: float
    storage_read_bytes_per_s: float | None = None


def decode_seconds(bytes_per_token: float, flops_per_token: float, basis: SpeedBasis, streamed_bytes: float = 0.0) -> float:
    mem = bytes_per_token / (basis.bandwidth_bytes_per_s * basis.efficiency)
    compute = flops_per_token / basis.compute_flops_per_s if basis.compute_flops_per_s else 0.0
    stream = streamed_bytes / basis.storage_read_bytes_per_s if streamed_bytes and basis.storage_read_bytes_per_s else 0.0
    return max(mem, compute) + stream + basis.per_token_overhead_s


def active_params(entry: ModelEntry) -> int:
    a = entry.arch
    if a.n_expert and a.n_expert_used:
        ffn = sum(3 * a.n_embd * f for f in a.per_layer(a.n_ff)) * a.n_expert
        return int(entry.params - ffn * (1 - a.n_expert_used / a.n_expert))
    return entry.params


def prefill_tokens_per_s(params_active: int, basis: SpeedBasis) -> float:
    # Prefill is compute-bound: 2 FLOPs per active parameter per token; batched matmuls run at
    # several times the decode GEMV rate on CPUs (ggml repacked kernels), fitted per device.
    return basis.compute_flops_per_s * PREFILL_SPEEDUP / (2.0 * max(1, params_active))


PREFILL_SPEEDUP = 4.0
