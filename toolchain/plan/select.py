"""Choose model, quant, context, KV type and threads under memory and latency budgets (pure).

Selection: the largest model (parameters), then the most bits per weight, among candidates that
fit usable memory and meet the decode budget. A quantized KV cache is used only when f16 does
not fit; streaming weights from storage only when nothing resident fits and it still meets the
budget. Every rejected candidate says why, with numbers, and what would make it fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from toolchain.core.nouns import Basis, Budget, Candidate, Placement, Plan, Prediction, Selected
from toolchain.core.units import fmt_bytes
from toolchain.models.catalog import TERNARY_QUANTS, ModelEntry
from toolchain.models.gguf_reader import GGUFInfo
from toolchain.plan import sizing
from toolchain.plan.placement import place, split_seconds
from toolchain.plan.sizing import (
    KV_TYPES,
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

LOW_BIT_FLOOR = 3.5  # bits per weight below which post-training quants lose too much quality
DEFAULT_CTX = 4096
BENCH_DEPTH = 128  # context depth at which decode is predicted (the runner's bench depth)
BENCH_PROMPT_TOKENS = 32  # the runner's longest bench prompt: the largest graph the bench runs
MIN_CTX = 512


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
    bench_prompt_tokens: int = BENCH_PROMPT_TOKENS
    swa_full: bool = False  # the runner keeps sliding-window layers at their window


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
    evaluated = [_evaluate(opt, basis, speed, budget, opts) for opt in options]
    candidates = [e.candidate for e in evaluated]
    fitting = [e for e in evaluated if e.selected is not None]
    fitting.sort(key=lambda e: (e.candidate.params, bits_per_weight(e.weights.total_bytes, e.candidate.params), e.candidate.mode == "resident"),
                 reverse=True)
    selected = fitting[0].selected if fitting else None
    nearest = None if selected else _nearest_miss(evaluated)
    return Plan(selected=selected, candidates=candidates, basis=basis, budget=budget, target=target, nearest_miss=nearest)


def bits_per_weight(weights_bytes: int, params: int) -> float:
    return 8.0 * weights_bytes / max(1, params)


@dataclass(frozen=True)
class _Eval:
    candidate: Candidate
    selected: Selected | None
    weights: Weights
    miss_ratio: float  # how far from fitting: max(needed/usable, predicted/budget); <= 1 fits


def _evaluate(opt: Option, basis: Basis, speed: SpeedBasis, budget: Budget, opts: PlanOptions) -> _Eval:
    entry, arch = opt.entry, opt.entry.arch
    w = weights_for(opt)
    ctx = min(opts.ctx or DEFAULT_CTX, arch.context_length)
    usable = basis.usable_memory_bytes
    reasons: list[str] = []
    fixes: list[str] = []
    chosen: tuple[Prediction, str, str] | None = None  # prediction, kv type, mode
    resident: list[tuple[str, Prediction]] = []
    for kv in opts.kv_types:  # the first KV type that fits; the rest are sized only if it is needed below
        pred = _predict(w, entry, ctx, kv, speed, opts)
        resident.append((kv, pred))
        if pred.peak_memory_bytes <= usable:
            chosen = (pred, kv, "resident")
            break
    mem_reason = ""
    if chosen is None and resident:
        kv0, p0 = resident[0]
        kvn, pn = resident[-1]
        mem_reason = f"needs {fmt_bytes(p0.peak_memory_bytes)} with {kv0} KV at ctx {ctx}" + (
            f" ({fmt_bytes(pn.peak_memory_bytes)} with {kvn} KV)" if kvn != kv0 else "") + f", {fmt_bytes(usable)} usable"
        fixes += _memory_fixes(w, entry, ctx, usable, min(p.peak_memory_bytes for _, p in resident), speed, opts)
        stream = _predict_stream(w, entry, ctx, resident, usable, speed, opts) if opts.mode == "auto" else None
        if stream is not None:
            chosen = stream
        else:
            reasons.append(mem_reason)
    if chosen is not None and chosen[0].decode_ms_per_token > budget.decode_ms_per_token:
        pred, _, mode = chosen
        if mode == "stream":
            reasons.append(mem_reason + "; streaming the rest from storage")
        reasons.append(f"predicted {pred.decode_ms_per_token:.1f} ms/token > {budget.decode_ms_per_token:g} ms budget"
                       + (" (streaming from storage)" if mode == "stream" else ""))
        if mode == "resident":  # a streaming plan's latency is no budget to suggest
            fixes.append(f"a budget of {math.ceil(pred.decode_ms_per_token)}ms would fit")
    for why, fix in option_rules(opt, w, opts):
        reasons.append(why)
        fixes.append(fix)
    ttft_ms = 0.0
    if budget.ttft_ms is not None and chosen is not None:
        ttft_ms = 1000.0 * opts.bench_prompt_tokens / chosen[0].prefill_tokens_per_s
        if ttft_ms > budget.ttft_ms:
            reasons.append(f"predicted time to first token {ttft_ms:.0f} ms > {budget.ttft_ms:g} ms budget")
            fixes.append(f"a time-to-first-token budget of {math.ceil(ttft_ms)}ms would fit")
    if chosen is not None and speed.backend != "cpu":
        placed = _placement(w, entry, ctx, chosen[1], speed)
        if isinstance(placed, str):
            reasons.append(placed)
            fixes.append("a smaller model or quant, --gpu-layers with fewer layers, or --backend cpu")
    fits = chosen is not None and not reasons
    if reasons:  # how near it came (the nearest miss) is judged on the smallest of every KV type
        resident += [(kv, _predict(w, entry, ctx, kv, speed, opts)) for kv in opts.kv_types[len(resident):]]
    smallest = min((p.peak_memory_bytes for _, p in resident), default=0)
    kv_type, mode = (chosen[1], chosen[2]) if chosen else ("f16", "resident")
    best_pred = chosen[0] if chosen else (resident[-1][1] if resident else None)
    cand = Candidate(model=entry.id, quant=opt.quant, fits=fits, reasons=reasons, predicted=best_pred, params=entry.params,
                     file_bytes=opt.file_bytes or w.total_bytes, file_bytes_estimated=w.estimated,
                     available=opt.available is not None, ctx=ctx, kv_type=kv_type, mode=mode, fixes=fixes)
    # distance from fitting, judged on the resident plan (a rejected streaming plan is no nearer)
    res_pred = chosen[0] if chosen and chosen[2] == "resident" else (resident[-1][1] if resident else None)
    ratio = max(smallest / usable if usable else math.inf,
                (res_pred.decode_ms_per_token / budget.decode_ms_per_token) if res_pred else math.inf)
    if not fits or chosen is None:
        return _Eval(cand, None, w, ratio)
    notes = list(opt.notes)
    if kv_type != "f16":
        notes.append(f"KV cache quantized to {kv_type} (needs flash attention, enabled) because f16 KV does not fit: "
                     f"{fmt_bytes(resident[0][1].peak_memory_bytes)} with f16, {fmt_bytes(usable)} usable")
    if mode == "stream":
        notes.append(f"STREAMING FROM STORAGE: the weights do not fit in RAM ({mem_reason}); "
                     f"{fmt_bytes(chosen[0].streamed_bytes_per_token)} per token are read from storage (mmap), "
                     "so decode depends on storage speed and page-cache pressure. This is not a resident plan.")
    if w.estimated:
        notes.append("file size estimated from the architecture and quant recipe")
    placement = _placement(w, entry, ctx, kv_type, speed)
    assert not isinstance(placement, str)  # a placement that failed is a reason above
    if placement.backend != "cpu" or speed.backend != "cpu":
        notes.append(f"placement: {placement.reason}")
    sel = Selected(
        model=entry.id, quant=opt.quant, params=entry.params, file_bytes=opt.file_bytes or w.total_bytes, ctx=ctx,
        kv_type=kv_type, threads=opts.threads, mode=mode, predicted=chosen[0], flash_attn=kv_type != "f16",
        use_mmap=True, gguf_path=opt.local.path if opt.local else None, notes=notes, placement=placement,
    )
    return _Eval(cand, sel, w, ratio)


def option_rules(opt: Option, w: Weights, opts: PlanOptions) -> list[tuple[str, str]]:
    """What rules an option out whatever the memory and speed (reason, fix): the quality floor and
    offline availability. A split across boards (plan/split.py) applies the same."""
    out = []
    bpw = bits_per_weight(w.total_bytes, opt.entry.params)
    if bpw < LOW_BIT_FLOOR and not (opt.entry.arch.ternary or opt.quant in TERNARY_QUANTS) and not opts.allow_low_bit:
        out.append((f"{bpw:.2f} bits per weight is below the {LOW_BIT_FLOOR} quality floor", "--allow-low-bit would permit it"))
    if opts.require_available and opt.available is None:
        out.append(("not available offline (no cached file or offline source)", "--online would download it"))
    return out


def _predict(w: Weights, entry: ModelEntry, ctx: int, kv_type: str, speed: SpeedBasis, opts: PlanOptions,
             streamed: float = 0.0, cap: int | None = None) -> Prediction:
    a = entry.arch
    mem = sizing.memory(w, a, ctx, kv_type, isa=speed.isa if not streamed else frozenset(), backend=speed.backend,
                        bench_prompt_tokens=opts.bench_prompt_tokens, bench_depth=opts.depth, swa_full=opts.swa_full)
    kv_read = kv_read_bytes(a, min(opts.depth, ctx), kv_type)
    per_token = w.per_token_bytes + kv_read
    family = w.dominant_type
    resident = 1.0 - streamed / max(1, w.per_token_bytes)
    by_type: dict[str, float] = {t: n * resident for t, n in (w.per_token_types or ((family, w.per_token_bytes),))}
    kv_t = sizing._KV_GGML[kv_type]
    by_type[kv_t] = by_type.get(kv_t, 0.0) + kv_read
    seconds = decode_seconds(per_token - streamed, speed, family=family, n_layer=a.n_layer, streamed_bytes=streamed,
                             by_type=by_type, rows=w.per_token_rows)
    peak = mem.peak_bytes + speed.memory_offset_bytes
    bench = mem.bench_bytes + speed.memory_offset_bytes
    placed = _placement(w, entry, ctx, kv_type, speed) if speed.backend != "cpu" else None
    gpu_layers, on_device = 0, 0
    if isinstance(placed, Placement):
        gpu_layers, on_device = placed.gpu_layers, placed.device_memory_bytes
        if speed.host is not None and placed.gpu_layers < a.n_layer:  # some or all layers on the CPU
            host_s = decode_seconds(per_token - streamed, speed.host, family=family, n_layer=a.n_layer, streamed_bytes=streamed,
                                    by_type=by_type, rows=w.per_token_rows)
            seconds = split_seconds(placed, seconds, speed.per_token_overhead_s, host_s, speed.host.per_token_overhead_s)
        if placed.offloaded and placed.device_budget_bytes is not None:
            # a discrete GPU's own memory holds these: host RAM keeps the rest (its compute buffer too)
            moved = max(0, on_device - mem.compute_bytes)
            peak, bench = max(0, peak - moved), max(0, bench - moved)
    if cap is not None:  # streaming: the page cache takes whatever RAM is left
        peak, bench = min(peak, cap), min(bench, cap)
    lo, hi = speed.interval
    return Prediction(
        decode_tokens_per_s_low=round(lo / seconds, 3), decode_tokens_per_s_high=round(hi / seconds, 3), n_layer=a.n_layer,
        rows_per_token=w.per_token_rows,
        decode_tokens_per_s=round(1.0 / seconds, 3),
        decode_ms_per_token=round(seconds * 1000.0, 3),
        prefill_tokens_per_s=round(prefill_tokens_per_s(active_params(entry), speed), 1),
        peak_memory_bytes=int(peak),
        weights_bytes=w.total_bytes, kv_bytes=mem.kv_bytes, compute_bytes=mem.compute_bytes, overhead_bytes=mem.runtime_bytes,
        bytes_per_token=int(per_token), streamed_bytes_per_token=int(streamed), bench_rss_bytes=int(bench),
        repack_bytes=mem.repack_bytes, kernel_family=family, efficiency=round(speed.efficiency * speed.factor(family), 4),
        per_token_overhead_s=round(speed.overhead_s(a.n_layer), 6),
        bytes_by_type={t: int(n) for t, n in sorted(by_type.items())}, gpu_layers=gpu_layers, device_memory_bytes=on_device,
    )


def _placement(w: Weights, entry: ModelEntry, ctx: int, kv_type: str, speed: SpeedBasis) -> Placement | str:
    """Where its layers go on the plan's backend (plan/placement.py), or why the accelerator holds none."""
    a = entry.arch
    kv = kv_cache_bytes(a, ctx, kv_type)
    compute = compute_buffer_bytes(a, sizing.UBATCH, ctx, kv_type != "f16")
    return place(speed.backend, a.n_layer, w.total_bytes, kv, compute, speed.device_memory, speed.gpu_layers,
                 flash_attn=kv_type != "f16")


def _predict_stream(w: Weights, entry: ModelEntry, ctx: int, resident: list[tuple[str, Prediction]], usable: int,
                    speed: SpeedBasis, opts: PlanOptions) -> tuple[Prediction, str, str] | None:
    """Weights that do not fit stay on storage and are paged in every token (mmap, no repack)."""
    if not speed.storage_read_bytes_per_s:
        return None
    for kv, p in resident:
        fixed = p.peak_memory_bytes - p.weights_bytes - p.repack_bytes  # KV, graph, runtime: must be resident
        room = usable - fixed
        if room <= 0.1 * w.total_bytes:  # thrashing, not streaming
            continue
        streamed = w.per_token_bytes * (1.0 - min(1.0, room / w.total_bytes))
        if streamed <= 0:  # only the CPU_REPACK copies do not fit: that is not streaming
            return None
        return _predict(w, entry, ctx, kv, speed, opts, streamed=streamed, cap=usable), kv, "stream"
    return None


def _memory_fixes(w: Weights, entry: ModelEntry, ctx: int, usable: int, smallest: int, speed: SpeedBasis,
                  opts: PlanOptions) -> list[str]:
    """What would make a candidate that does not fit memory fit: a shorter context, else more RAM."""
    fixes = []
    c = ctx // 2
    while c >= MIN_CTX:
        for kv in opts.kv_types:
            if _predict(w, entry, c, kv, speed, opts).peak_memory_bytes <= usable:
                fixes.append(f"--ctx {c}" + (f" (with {kv} KV)" if kv != "f16" else "") + " would fit")
                break
        if fixes:
            break
        c //= 2
    fixes.append(f"{fmt_bytes(smallest - usable)} more usable memory would fit")
    return fixes


def _nearest_miss(evaluated: list[_Eval]) -> str | None:
    """The candidate closest to fitting, why it does not, and what would make it fit."""
    scored = [e for e in evaluated if e.candidate.reasons]
    if not scored:
        return None
    e = min(scored, key=lambda e: (e.miss_ratio, -e.candidate.params))
    c = e.candidate
    text = f"{c.model} {c.quant}: " + "; ".join(c.reasons)
    if c.fixes:
        text += "; " + " or ".join(c.fixes)
    return text
