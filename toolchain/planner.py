"""Choose model, quant, context, KV type and threads under memory and latency budgets (pure).

Selection: the largest model (parameters), then the most bits per weight, among candidates that
fit usable memory and meet the decode budget. Every rejected candidate says why, with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolchain.catalog import TERNARY_QUANTS, ModelEntry
from toolchain.gguf_file import GGUFInfo
from toolchain.models import Basis, Budget, Candidate, Plan, Prediction, Selected
from toolchain.sizing import (
    KV_TYPES,
    RUNTIME_OVERHEAD_BYTES,
    SpeedBasis,
    Weights,
    active_params,
    compute_buffer_bytes,
    decode_seconds,
    kv_cache_bytes,
    kv_read_bytes,
    prefill_tokens_per_s,
    weights_estimate,
    weights_from_file_size,
    weights_from_gguf,
)
from toolchain.units import fmt_bytes

LOW_BIT_FLOOR = 3.5  # bits per weight below which post-training quants lose too much quality
DEFAULT_CTX = 4096
BENCH_DEPTH = 128  # context depth at which decode is predicted (the runner's bench depth)


@dataclass(frozen=True)
class PlanOptions:
    ctx: int | None = None
    threads: int = 1
    allow_low_bit: bool = False
    require_available: bool = False
    kv_types: tuple[str, ...] = KV_TYPES
    models: tuple[str, ...] = ()
    quants: tuple[str, ...] = ()
    mode: str = "auto"  # auto | resident  (stream is only chosen by auto when it meets the budget)
    depth: int = BENCH_DEPTH


@dataclass(frozen=True)
class Option:
    """One (model, quant) the planner may pick, with what is known about its file."""

    entry: ModelEntry
    quant: str
    file_bytes: int | None
    available: str | None  # how it can be had offline, or None
    local: GGUFInfo | None = None
    notes: list[str] = field(default_factory=list)


def weights_for(opt: Option) -> Weights:
    if opt.local is not None:
        return weights_from_gguf(opt.local, opt.entry.arch)
    if opt.file_bytes:
        return weights_from_file_size(opt.entry, opt.quant, opt.file_bytes)
    return weights_estimate(opt.entry, opt.quant)


def make_plan(options: list[Option], basis: Basis, speed: SpeedBasis, budget: Budget, opts: PlanOptions, target: str = "") -> Plan:
    candidates: list[Candidate] = []
    fitting: list[tuple[Candidate, Selected]] = []
    for opt in options:
        cand, sel = _evaluate(opt, basis, speed, budget, opts)
        candidates.append(cand)
        if sel is not None:
            fitting.append((cand, sel))
    fitting.sort(key=lambda cs: (cs[1].params, _bpw(cs[1].file_bytes, cs[1].params), cs[1].mode == "resident"), reverse=True)
    selected = fitting[0][1] if fitting else None
    nearest = None if selected else _nearest_miss(candidates)
    return Plan(selected=selected, candidates=candidates, basis=basis, budget=budget, target=target, nearest_miss=nearest)


def _bpw(file_bytes: int, params: int) -> float:
    return 8.0 * file_bytes / max(1, params)


def _evaluate(opt: Option, basis: Basis, speed: SpeedBasis, budget: Budget, opts: PlanOptions) -> tuple[Candidate, Selected | None]:
    entry, arch = opt.entry, opt.entry.arch
    w = weights_for(opt)
    ctx = min(opts.ctx or DEFAULT_CTX, arch.context_length)
    reasons: list[str] = []
    bpw = _bpw(w.total_bytes, entry.params)
    ternary = arch.ternary or opt.quant in TERNARY_QUANTS
    low_bit = bpw < LOW_BIT_FLOOR and not ternary and not opts.allow_low_bit
    flops = 2.0 * active_params(entry) + 4.0 * arch.n_layer * opts.depth * max(arch.per_layer(arch.n_head)) * arch.head_dim
    common = dict(model=entry.id, quant=opt.quant, params=entry.params, file_bytes=opt.file_bytes or w.total_bytes,
                  file_bytes_estimated=w.estimated, available=opt.available is not None, ctx=ctx)
    best: tuple[Prediction, str, str] | None = None  # prediction, kv type, mode
    for kv_type in opts.kv_types:
        pred, mode, why = _predict(w, arch, ctx, kv_type, flops, entry, basis, speed, opts)
        if pred is None:
            reasons.append(why)
            continue
        if pred.decode_ms_per_token > budget.decode_ms_per_token:
            reasons.append(f"predicted {pred.decode_ms_per_token:.1f} ms/token > {budget.decode_ms_per_token:g} ms budget"
                           + (f" ({mode} from storage)" if mode == "stream" else ""))
            best = best or (pred, kv_type, mode)
            break  # a smaller KV type does not make decode meaningfully faster
        best = (pred, kv_type, mode)
        break
    if low_bit:
        reasons.append(f"{bpw:.2f} bits per weight is below the {LOW_BIT_FLOOR} quality floor (--allow-low-bit to permit)")
    if opts.require_available and opt.available is None:
        reasons.append("not available offline (no cached file or offline source)")
    if budget.ttft_ms is not None and best is not None:
        ttft_ms = 1000.0 * opts.depth / best[0].prefill_tokens_per_s
        if ttft_ms > budget.ttft_ms:
            reasons.append(f"predicted time to first token {ttft_ms:.0f} ms > {budget.ttft_ms:g} ms budget")
    fits = best is not None and all(r.startswith("needs") for r in reasons)
    kv_type, mode = (best[1], best[2]) if best else ("f16", "resident")
    cand = Candidate(fits=fits, reasons=reasons, predicted=best[0] if best else None, kv_type=kv_type, mode=mode, **common)  # type: ignore[arg-type]
    if not fits or best is None:
        return cand, None
    notes = list(opt.notes)
    if kv_type != "f16":
        notes.append(f"KV cache quantized to {kv_type} (with flash attention) because f16 KV does not fit")
    if mode == "stream":
        notes.append("STREAMING: weights do not fit in RAM; the rest is read from storage every token (mmap)")
    if w.estimated:
        notes.append("file size estimated from the architecture and quant recipe")
    sel = Selected(
        model=entry.id, quant=opt.quant, params=entry.params, file_bytes=opt.file_bytes or w.total_bytes, ctx=ctx,
        kv_type=kv_type, threads=opts.threads, mode=mode, predicted=best[0], flash_attn=kv_type != "f16",
        use_mmap=True, gguf_path=opt.local.path if opt.local else None, notes=notes,
    )
    return cand, sel


def _predict(w: Weights, arch: object, ctx: int, kv_type: str, flops: float, entry: ModelEntry, basis: Basis,
             speed: SpeedBasis, opts: PlanOptions) -> tuple[Prediction | None, str, str]:
    a = entry.arch
    kv = kv_cache_bytes(a, ctx, kv_type)
    compute = compute_buffer_bytes(a, ctx, flash_attn=kv_type != "f16")
    need = w.total_bytes + kv + compute + RUNTIME_OVERHEAD_BYTES
    per_token = w.per_token_bytes + kv_read_bytes(a, min(opts.depth, ctx), kv_type)
    mode, streamed = "resident", 0.0
    if need > basis.usable_memory_bytes:
        why = f"needs {fmt_bytes(need)} with {kv_type} KV at ctx {ctx}, {fmt_bytes(basis.usable_memory_bytes)} usable"
        room = basis.usable_memory_bytes - (kv + compute + RUNTIME_OVERHEAD_BYTES)
        if opts.mode == "resident" or not speed.storage_read_bytes_per_s or room <= 0:
            return None, mode, why
        mode = "stream"
        streamed = w.per_token_bytes * (1.0 - room / w.total_bytes)
        need = basis.usable_memory_bytes
    seconds = decode_seconds(per_token - streamed, flops, speed, streamed_bytes=streamed)
    pred = Prediction(
        decode_tokens_per_s=round(1.0 / seconds, 3),
        decode_ms_per_token=round(seconds * 1000.0, 3),
        prefill_tokens_per_s=round(prefill_tokens_per_s(active_params(entry), speed), 1),
        peak_memory_bytes=int(need),
        weights_bytes=w.total_bytes, kv_bytes=kv, compute_bytes=compute, overhead_bytes=RUNTIME_OVERHEAD_BYTES,
        bytes_per_token=int(per_token), streamed_bytes_per_token=int(streamed),
    )
    return pred, mode, ""


def _nearest_miss(candidates: list[Candidate]) -> str | None:
    """The candidate closest to fitting, and what would make it fit."""
    scored = [c for c in candidates if c.reasons]
    if not scored:
        return None
    def distance(c: Candidate) -> float:
        return (c.predicted.decode_ms_per_token if c.predicted else 1e9) + c.file_bytes / 1e9
    c = min(scored, key=distance)
    return f"{c.model} {c.quant}: " + "; ".join(c.reasons)
