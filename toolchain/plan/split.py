"""One model across several boards joined by a network, with llama.cpp's RPC backend (pure).

llama.cpp gives each device a contiguous run of layers (its --tensor-split slots, in device order,
the output layer being the last slot) and runs them one after the other every token: the head
computes the token embedding, hands the hidden state to the first worker, reads that worker's
output back, hands it to the next one, and so on; the head's own layers and the output layer come
last (the head keeps the output: sending the hidden state back costs n_embd floats, sending logits
back would cost n_vocab). llama.cpp lists RPC devices first and never the CPU as a device, so the
head's layers and the output run in an rpc-server of the head's own on loopback, the last device
(deploy/group.py); its memory (a second runtime, and the copy of a tied embedding table the output
layer gets) is the head's. Decode does not overlap the nodes, so a token costs every node's share
(its bytes at its own read rate plus its own fixed costs: each node runs its own graph) plus, for
each worker, the hop.

The hop, counted in ggml-rpc.cpp as the runner's llama.cpp speaks it (llama-cpp-python 0.3.36
vendors RPC protocol 7.0.0): SET_TENSOR (the hidden state, the KQ mask, the positions) and
GRAPH_COMPUTE / GRAPH_RECOMPUTE go out without waiting for a reply (the server answers neither:
ggml-org/llama.cpp PR #12943 dropped the SET_TENSOR reply, "we send this 4 times per token", and
PR #18626 made the client's graph_compute asynchronous); the head then waits on one GET_TENSOR for
the worker's output, which the server answers only after computing its layers. One blocking round
trip per worker per token, plus the bytes each way at the link's throughput. Workers do not talk to
each other (a copy between two servers goes through the head: cpy_tensor refuses two endpoints).

Layers are shared in proportion to what each node can hold (its usable memory less its fixed part,
in layers) times how fast it streams them: a faster node takes more, and no node is filled to the
brim while another has room, because an error in the memory model is an OOM while an error in speed
is only a slower token. Every node's share is then checked exactly against its usable memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import combinations

from toolchain.core.nouns import Basis, Budget, Candidate, LinkFacts, NodeShare, Placement, Plan, Prediction, Selected, SplitPlacement
from toolchain.core.units import fmt_bytes
from toolchain.plan import sizing
from toolchain.plan.select import DEFAULT_CTX, Option, PlanOptions, bits_per_weight, option_rules, weights_for
from toolchain.plan.sizing import KV_PAD, UBATCH, SpeedBasis, Weights

ROUND_TRIPS_PER_WORKER = 1  # blocking round trips per worker per decoded token (see above)
HIDDEN_BYTES_PER_VALUE = 4  # the hidden state crosses as F32
RPC_TENSOR_BYTES = 296  # sizeof(rpc_tensor) in ggml-rpc.cpp: every command names its tensor with one
RPC_COMMAND_BYTES = 9  # command byte + 8-byte payload size
# rpc-server's own memory beside the tensors it holds: ggml and its CPU backend, no python. An
# estimate until a worker's telemetry measures it.
RPC_SERVER_RUNTIME_BYTES = 32 << 20
MAX_ENUMERATED_WORKERS = 7  # up to 2^7 subsets of workers are tried; a larger group is used whole


@dataclass(frozen=True)
class GroupNode:
    """One board of a group as the planner sees it: what plan/basis.py built for it alone."""

    target: str
    basis: Basis  # usable memory, confidence
    speed: SpeedBasis
    threads: int
    link: LinkFacts | None = None  # head -> this worker, measured; None for the head


@dataclass(frozen=True)
class LayerTable:
    """What a split needs of one model at one context and KV type, per repeating layer."""

    n_layer: int
    n_embd: int
    layer_bytes: tuple[int, ...]  # resident
    layer_read_bytes: tuple[int, ...]  # read per token (MoE: the active experts)
    kv_bytes: tuple[int, ...]
    kv_read_bytes: tuple[int, ...]  # at the bench depth
    head_bytes: int  # what stays on the head whatever the split: token embeddings, output layer, norms
    output_read_bytes: int  # read per token by the output projection (the embeddings when tied)
    compute_bytes: int  # one node's graph buffer at a full batch and full context
    bench_compute_bytes: int
    head_runtime_bytes: int  # the runner's process before weights
    repack_share: float  # of the head's weights llama.cpp copies for its CPU kernels (bench RSS only)
    kv_ggml: str
    mask_cells: int  # KQ mask entries per token at the bench depth
    has_swa: tuple[bool, ...]
    weight_types: tuple[tuple[str, float], ...] = ()  # share of the weights read per token by ggml type (kernels differ)
    rows: int = 0  # matrix rows a token's matmuls produce, the whole model
    active_params: int = 0
    tied_output_bytes: int = 0  # tied embeddings: the output layer's copy of the table, on the output device


def layer_table(opt: Option, w: Weights, ctx: int, kv_type: str, opts: PlanOptions, isa: frozenset[str]) -> LayerTable:
    a = opt.entry.arch
    n = a.n_layer
    layers = _layer_bytes(opt, w)
    out_read = w.output_bytes or w.token_embd_bytes  # tied: the embedding table is the output projection
    layer_read_total = max(0, w.per_token_bytes - out_read)
    total_layers = max(1, sum(layers))
    read = tuple(int(b * layer_read_total / total_layers) for b in layers)
    cells = sizing.kv_cells(a, ctx, opts.swa_full)
    t = sizing._KV_GGML[kv_type]
    kvh = a.per_layer(a.n_head_kv)
    row = [sizing.rowsize(t, a.head_dim * h) * 2 for h in kvh]
    swa = sizing.swa_layers(a)
    depth = min(opts.depth, ctx)
    kv_read = tuple((min(depth, a.sliding_window or depth) if s else depth) * r for s, r in zip(swa, row, strict=True))
    flash = kv_type != "f16"
    padded = _pad(ctx)
    rep = sizing.repack_bytes(w, isa)
    return LayerTable(
        n_layer=n, n_embd=a.n_embd, layer_bytes=layers, layer_read_bytes=read,
        kv_bytes=tuple(c * r for c, r in zip(cells, row, strict=True)), kv_read_bytes=kv_read,
        head_bytes=max(0, w.total_bytes - sum(layers)), output_read_bytes=out_read,
        compute_bytes=sizing.compute_buffer_bytes(a, UBATCH, padded, flash),
        bench_compute_bytes=sizing.compute_buffer_bytes(a, opts.bench_prompt_tokens, _pad(min(ctx, opts.depth)), flash),
        head_runtime_bytes=sizing.runtime_bytes(w, a), repack_share=rep / max(1, w.total_bytes), kv_ggml=t,
        mask_cells=_pad(depth + 1), has_swa=tuple(swa), weight_types=_mix(w), rows=w.per_token_rows,
        active_params=sizing.active_params(opt.entry), tied_output_bytes=0 if w.output_bytes else w.token_embd_bytes,
    )


def _mix(w: Weights) -> tuple[tuple[str, float], ...]:
    total = sum(n for _, n in w.per_token_types)
    if not total:
        return ((w.dominant_type or "F16", 1.0),)
    return tuple((t, n / total) for t, n in w.per_token_types)


def _pad(n: int) -> int:
    return (n + KV_PAD - 1) // KV_PAD * KV_PAD


def _layer_bytes(opt: Option, w: Weights) -> tuple[int, ...]:
    """Each repeating layer's tensors: summed from the GGUF's tensor table when the file is here,
    else the repeating part of the model spread evenly (a recipe's promoted layers differ by a few %)."""
    n = opt.entry.arch.n_layer
    if opt.local is not None and opt.local.tensors:
        by = [0] * n
        for t in opt.local.tensors:
            parts = t.name.split(".")
            if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < n:
                by[int(parts[1])] += t.n_bytes
        if sum(by):
            return tuple(by)
    rest = max(0, w.total_bytes - w.token_embd_bytes - w.output_bytes)
    return tuple(rest // max(1, n) for _ in range(n))


# --- the link -----------------------------------------------------------------------------------


def hop_bytes(table: LayerTable, first: int, count: int) -> tuple[int, int]:
    """Bytes per token to a worker holding layers [first, first + count) and back from it: the
    RPC commands of one decode step (ggml-rpc.cpp's message layouts), the hidden state both ways."""
    hidden = HIDDEN_BYTES_PER_VALUE * table.n_embd
    set_tensor = RPC_COMMAND_BYTES + RPC_TENSOR_BYTES + 1 + 8  # + cache flag + offset, then the data
    swa = table.has_swa[first:first + count]
    masks = int(any(swa)) + int(not all(swa))  # a sliding-window model has a second mask
    to_worker = (set_tensor + hidden  # the hidden state
                 + masks * (set_tensor + 4 * table.mask_cells)  # the F32 KQ mask
                 + set_tensor + 4  # the token's position
                 + RPC_COMMAND_BYTES + 4  # GRAPH_RECOMPUTE (the graph itself is sent once, then reused)
                 + RPC_COMMAND_BYTES + RPC_TENSOR_BYTES + 16)  # GET_TENSOR's request
    return to_worker, 8 + hidden


def hop_seconds(link: LinkFacts, to_worker: int, from_worker: int, rtt_s: float | None = None) -> float:
    """One worker's hop per token: its blocking round trips, then the bytes each way at the link's
    throughput (the round trip measured with small messages already holds the latency)."""
    rtt = link.rtt_s if rtt_s is None else rtt_s
    return ROUND_TRIPS_PER_WORKER * rtt + (to_worker + from_worker) / max(1.0, link.throughput_bytes_per_s)


# --- one placement --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    split: SplitPlacement
    head_memory: int
    head_bench: int
    compute_s: float
    link_s: float
    slow_s: float  # the low end of the interval: every node at its slowest, the link at its p90
    fast_s: float
    overhead_s: float  # every node's fixed per-token cost
    prefill_s: float  # per prompt token: each node's share of the FLOPs, one after the other


def _fixed_bytes(table: LayerTable, node: GroupNode, head: bool) -> int:
    """The head runs the runner (token embeddings, on its CPU: llama.cpp never offloads the input
    layer) and an rpc-server of its own on loopback for its layers and the output layer (the
    last RPC device: deploy/group.py), which copies a tied embedding table as the output. Each
    process has its compute buffer (the runner's CPU one measured 21.8 MiB for SmolLM2 at ctx 4096,
    the one-board formula says 18.4)."""
    if head:
        return (table.head_runtime_bytes + table.head_bytes + 2 * table.compute_bytes + node.speed.memory_offset_bytes
                + RPC_SERVER_RUNTIME_BYTES + table.tied_output_bytes)
    return RPC_SERVER_RUNTIME_BYTES + table.compute_bytes


def _memory(table: LayerTable, node: GroupNode, head: bool, first: int, count: int) -> int:
    r = slice(first, first + count)
    return _fixed_bytes(table, node, head) + sum(table.layer_bytes[r]) + sum(table.kv_bytes[r])


def assign_layers(n_layer: int, caps: list[int], weights: list[float], at_least_one: list[bool]) -> list[int] | None:
    """Layers per node in proportion to weights, none above its cap (water-filling: a node that
    would pass its cap gets the cap and the rest is shared again among the others), rounded by
    largest remainder; None when the caps cannot hold n_layer or a node that must take a layer
    cannot take one."""
    if sum(caps) < n_layer or any(need and cap < 1 for need, cap in zip(at_least_one, caps, strict=True)):
        return None
    if sum(at_least_one) > n_layer:
        return None
    counts = [0] * len(caps)
    left = n_layer
    open_ = {i for i in range(len(caps)) if caps[i] > 0}
    while left > 0 and open_:
        total = sum(max(0.0, weights[i]) for i in open_)
        ideal = {i: left * (max(0.0, weights[i]) / total if total > 0 else 1.0 / len(open_)) for i in open_}
        full = [i for i in open_ if counts[i] + ideal[i] >= caps[i]]
        if full:
            for i in full:
                left -= caps[i] - counts[i]
                counts[i] = caps[i]
                open_.discard(i)
            continue
        floors = {i: int(ideal[i]) for i in open_}
        for i in open_:
            counts[i] += floors[i]
        left -= sum(floors.values())
        for i in sorted(open_, key=lambda i: (ideal[i] - floors[i], -i), reverse=True)[:left]:
            counts[i] += 1
        left = 0
    if left:
        return None
    for i, need in enumerate(at_least_one):  # a node that must take part but got nothing takes one from the largest share
        if need and counts[i] == 0:
            j = max((j for j in range(len(counts)) if counts[j] > (1 if at_least_one[j] else 0)), key=lambda j: counts[j], default=None)
            if j is None:
                return None
            counts[j] -= 1
            counts[i] += 1
    return counts


def place(table: LayerTable, head: GroupNode, workers: list[GroupNode]) -> Placed | str:
    """The split of one model over the head and these workers, or why they cannot hold it."""
    nodes = [*workers, head]  # llama.cpp's device order: the workers as --rpc lists them, then the head
    is_head = [False] * len(workers) + [True]
    per_layer = (sum(table.layer_bytes) + sum(table.kv_bytes)) / max(1, table.n_layer)
    caps, weights = [], []
    for node, h in zip(nodes, is_head, strict=True):
        room = node.basis.usable_memory_bytes - _fixed_bytes(table, node, h)
        cap = max(0, min(table.n_layer, int(room // max(1.0, per_layer))))
        caps.append(cap)
        layer_s = _seconds(table, node, 0, 1, with_fixed=False) + node.speed.per_layer_overhead_s
        weights.append(cap / max(1e-12, layer_s))
    counts = assign_layers(table.n_layer, caps, weights, [not h for h in is_head])
    if counts is None:
        need = sum(_fixed_bytes(table, n, h) for n, h in zip(nodes, is_head, strict=True)) + sum(table.layer_bytes) + sum(table.kv_bytes)
        have = sum(n.basis.usable_memory_bytes for n in nodes)
        if sum(caps) >= table.n_layer:
            short = [n.target for n, c, h in zip(nodes, caps, is_head, strict=True) if not h and c < 1]
            return f"{', '.join(short)} cannot hold one layer beside its fixed part"
        return f"needs {fmt_bytes(need)} across {'+'.join(n.target for n in [head, *workers])}, {fmt_bytes(have)} usable"
    for _ in range(table.n_layer):  # the caps used an average layer: check the real ranges, move a layer where one overflows
        firsts = _firsts(counts)
        mem = [_memory(table, n, h, f, c) for n, h, f, c in zip(nodes, is_head, firsts, counts, strict=True)]
        over = [i for i, n in enumerate(nodes) if mem[i] > n.basis.usable_memory_bytes]
        if not over:
            break
        i = over[0]
        spare = [j for j, n in enumerate(nodes) if j != i and n.basis.usable_memory_bytes - mem[j] >= max(table.layer_bytes) + max(table.kv_bytes)]
        floor = 1 if not is_head[i] else 0
        if not spare or counts[i] <= floor:
            return f"{nodes[i].target}'s share needs {fmt_bytes(mem[i])}, {fmt_bytes(nodes[i].basis.usable_memory_bytes)} usable"
        j = max(spare, key=lambda j: nodes[j].basis.usable_memory_bytes - mem[j])
        counts[i] -= 1
        counts[j] += 1
    else:
        return "no share of the layers fits every node"
    return _build(table, nodes, is_head, counts)


def _firsts(counts: list[int]) -> list[int]:
    out, at = [], 0
    for c in counts:
        out.append(at)
        at += c
    return out


def _seconds(table: LayerTable, node: GroupNode, first: int, count: int, *, head: bool = False, with_fixed: bool = True) -> float:
    """Decode seconds of a node's share: its weights (per ggml type) and KV at its read rate, its
    matrix rows, and (with_fixed) its own per-token cost and its layers' per-layer cost."""
    r = slice(first, first + count)
    weights = sum(table.layer_read_bytes[r]) + (table.output_read_bytes if head else 0)
    by: dict[str, float] = {}
    for t, share in table.weight_types:
        by[t] = by.get(t, 0.0) + weights * share
    by[table.kv_ggml] = by.get(table.kv_ggml, 0.0) + sum(table.kv_read_bytes[r])
    s = node.speed
    mem = sum(b / (s.bandwidth_bytes_per_s * s.efficiency * s.factor(t)) for t, b in by.items())
    rows = table.rows * weights / max(1, sum(table.layer_read_bytes) + table.output_read_bytes)
    return mem + (s.overhead_s(count) if with_fixed else 0.0) + s.per_row_s * rows


def _build(table: LayerTable, nodes: list[GroupNode], is_head: list[bool], counts: list[int]) -> Placed:
    firsts = _firsts(counts)
    shares: list[NodeShare] = []
    compute = slow = fast = link_total = overhead = prefill = 0.0
    hops = link_bytes = 0
    head_memory = head_bench = 0
    for node, h, first, count in zip(nodes, is_head, firsts, counts, strict=True):
        r = slice(first, first + count)
        t = _seconds(table, node, first, count, head=h)
        lo, hi = node.speed.interval
        compute += t
        overhead += node.speed.overhead_s(count)
        prefill += (count + (1 if h else 0)) / (table.n_layer + 1) * 2.0 * max(1, table.active_params) / max(1.0, node.speed.compute_flops_per_s)
        slow += t / max(1e-9, lo)
        fast += t / max(1e-9, hi)
        hop_s, hop_b = 0.0, 0
        if not h:
            link = node.link
            assert link is not None  # group.py measures every worker's link before planning
            to_w, from_w = hop_bytes(table, first, count)
            hop_s, hop_b = hop_seconds(link, to_w, from_w), to_w + from_w
            slow += hop_seconds(link, to_w, from_w, max(link.rtt_p90_s, link.rtt_s))
            fast += hop_seconds(link, to_w, from_w, min(link.rtt_min_s, link.rtt_s) if link.rtt_min_s > 0 else link.rtt_s)
            link_total += hop_s
            link_bytes += hop_b
            hops += ROUND_TRIPS_PER_WORKER
        weights = sum(table.layer_bytes[r]) + (table.head_bytes if h else 0)
        mem = _memory(table, node, h, first, count)
        if h:
            head_memory = mem
            head_bench = (mem - table.compute_bytes + table.bench_compute_bytes + int(weights * table.repack_share))
        read = sum(table.layer_read_bytes[r]) + sum(table.kv_read_bytes[r]) + (table.output_read_bytes if h else 0)
        rate = node.speed.bandwidth_bytes_per_s * node.speed.efficiency
        shares.append(NodeShare(
            target=node.target, role="head" if h else "worker", layer_first=first, layer_count=count, output_layer=h,
            address=node.link.address if node.link else "", threads=node.threads, memory_bytes=mem,
            usable_memory_bytes=node.basis.usable_memory_bytes, weights_bytes=weights, kv_bytes=sum(table.kv_bytes[r]),
            compute_bytes=table.compute_bytes, runtime_bytes=table.head_runtime_bytes if h else RPC_SERVER_RUNTIME_BYTES,
            read_bytes_per_token=read, read_bytes_per_s=round(rate, 1), decode_ms_per_token=round(t * 1000, 3),
            link_ms_per_token=round(hop_s * 1000, 3), link_bytes_per_token=hop_b, confidence=node.basis.confidence,
        ))
    total = compute + link_total
    split = SplitPlacement(
        nodes=shares, links=[n.link for n in nodes if n.link is not None], n_layer=table.n_layer,
        compute_ms_per_token=round(compute * 1000, 3), link_ms_per_token=round(link_total * 1000, 3),
        link_round_trips_per_token=hops, link_bytes_per_token=link_bytes, decode_ms_per_token=round(total * 1000, 3),
        decode_tokens_per_s=round(1.0 / total, 3), decode_tokens_per_s_low=round(1.0 / slow, 3),
        decode_tokens_per_s_high=round(1.0 / fast, 3),
        tensor_split=[c + (1 if h else 0) for c, h in zip(counts, is_head, strict=True)], n_gpu_layers=table.n_layer + 1,
    )
    return Placed(split, head_memory, head_bench, compute, link_total, slow, fast, overhead, prefill)


# --- the group's candidates -------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitOutcome:
    """Every option evaluated across the group, and the one a split would take."""

    candidates: list[Candidate]
    best: Selected | None
    split: SplitPlacement | None
    nearest_miss: str | None


def worker_sets(workers: list[GroupNode]) -> list[list[GroupNode]]:
    """The workers a split may use beside the head: every non-empty subset in the given order (fewer
    hops can beat more memory), or the whole group when it is too large to enumerate."""
    if len(workers) > MAX_ENUMERATED_WORKERS:
        return [workers]
    return [list(c) for k in range(1, len(workers) + 1) for c in combinations(workers, k)]


def evaluate_split(options: list[Option], head: GroupNode, workers: list[GroupNode], budget: Budget, opts: PlanOptions) -> SplitOutcome:
    """Each (model, quant) split across the head and the best subset of workers: the fastest share
    that fits every node, with the first KV type that fits (as one board's plan takes it)."""
    sets = worker_sets(workers)
    results: list[tuple[Candidate, Selected | None, SplitPlacement | None, float]] = []
    for opt in options:
        results.append(_evaluate(opt, head, sets, budget, opts))
    candidates = [r[0] for r in results]
    fitting = [r for r in results if r[1] is not None]
    fitting.sort(key=lambda r: (r[0].params, bits_per_weight(r[0].file_bytes, r[0].params)), reverse=True)
    if fitting:
        _, sel, split, _ = fitting[0]
        return SplitOutcome(candidates, sel, split, None)
    missed = [r for r in results if r[0].reasons]
    nearest = None
    if missed:
        c = min(missed, key=lambda r: (r[3], -r[0].params))[0]
        nearest = f"{c.model} {c.quant}: " + "; ".join(c.reasons) + ("; " + " or ".join(c.fixes) if c.fixes else "")
    return SplitOutcome(candidates, None, None, nearest)


def _evaluate(opt: Option, head: GroupNode, sets: list[list[GroupNode]], budget: Budget,
              opts: PlanOptions) -> tuple[Candidate, Selected | None, SplitPlacement | None, float]:
    entry, a = opt.entry, opt.entry.arch
    w = weights_for(opt)
    ctx = min(opts.ctx or DEFAULT_CTX, a.context_length)
    reasons: list[str] = []
    fixes: list[str] = []
    best: tuple[str, LayerTable, Placed] | None = None
    why = ""
    for kv in opts.kv_types:
        table = layer_table(opt, w, ctx, kv, opts, head.speed.isa)
        tried = [place(table, head, ws) for ws in sets]
        placed = [p for p in tried if isinstance(p, Placed)]
        if placed:
            best = (kv, table, min(placed, key=lambda p: p.split.decode_ms_per_token))
            break
        why = next((p for p in tried if isinstance(p, str) and p.startswith("needs")), str(tried[-1]) if tried else "no workers")
    ratio = math.inf
    pred: Prediction | None = None
    kv_type = "f16"
    if best is None:
        reasons.append(f"{why} (ctx {ctx}, {opts.kv_types[-1]} KV)")
        fixes.append("a shorter --ctx, or another board in the group")
        ratio = 2.0
    else:
        kv_type, table, p = best
        pred = _prediction(p, table, w, head)
        ratio = p.split.decode_ms_per_token / budget.decode_ms_per_token
        if p.split.decode_ms_per_token > budget.decode_ms_per_token:
            reasons.append(f"split predicted {p.split.decode_ms_per_token:.1f} ms/token > {budget.decode_ms_per_token:g} ms budget "
                           f"({p.split.link_ms_per_token:.1f} ms of it on the link)")
            fixes.append(f"a budget of {math.ceil(p.split.decode_ms_per_token)}ms would fit")
    for r, f in option_rules(opt, w, opts):
        reasons.append(r)
        fixes.append(f)
    fits = best is not None and not reasons
    cand = Candidate(model=entry.id, quant=opt.quant, fits=fits, reasons=reasons, predicted=pred, params=entry.params,
                     file_bytes=opt.file_bytes or w.total_bytes, file_bytes_estimated=w.estimated, available=opt.available is not None,
                     ctx=ctx, kv_type=kv_type, mode="resident", fixes=fixes)
    if not fits or best is None or pred is None:
        return cand, None, None, ratio
    split = best[2].split
    notes = list(opt.notes)
    if kv_type != "f16":
        notes.append(f"KV cache quantized to {kv_type} (needs flash attention, enabled) because f16 KV does not fit the group")
    if w.estimated:
        notes.append("file size estimated from the architecture and quant recipe")
    head_share = split.nodes[-1]
    sel = Selected(
        model=entry.id, quant=opt.quant, params=entry.params, file_bytes=opt.file_bytes or w.total_bytes, ctx=ctx, kv_type=kv_type,
        threads=head.threads, mode="resident", predicted=pred, flash_attn=kv_type != "f16", use_mmap=True,
        gguf_path=opt.local.path if opt.local else None, notes=notes,
        placement=Placement(backend="cpu", n_layer=a.n_layer, flash_attn=kv_type != "f16",
                            reason=f"split over llama.cpp RPC: the head {head_share.target} runs layers {head_share.layer_first}-"
                                   f"{head_share.layer_first + head_share.layer_count - 1} and the output on its CPU"
                                   if head_share.layer_count else f"split over llama.cpp RPC: the head {head_share.target} runs the output"),
    )
    return cand, sel, split, ratio


def _prediction(p: Placed, table: LayerTable, w: Weights, head: GroupNode) -> Prediction:
    """The split as one Prediction (what `plan` prints and validate judges): memory is the head's
    process (the runner's telemetry is the head's), bytes and speed are the whole token's."""
    s = p.split
    weights_read = sum(table.layer_read_bytes) + table.output_read_bytes
    kv_read = sum(table.kv_read_bytes)
    by: dict[str, int] = {}
    for t, share in table.weight_types:
        by[t] = by.get(t, 0) + int(weights_read * share)
    by[table.kv_ggml] = by.get(table.kv_ggml, 0) + kv_read
    head_share = s.nodes[-1]
    return Prediction(
        decode_tokens_per_s=s.decode_tokens_per_s, decode_ms_per_token=s.decode_ms_per_token,
        prefill_tokens_per_s=round(1.0 / p.prefill_s, 1) if p.prefill_s > 0 else 0.0,
        peak_memory_bytes=p.head_memory, weights_bytes=w.total_bytes, kv_bytes=sum(table.kv_bytes), compute_bytes=table.compute_bytes,
        overhead_bytes=table.head_runtime_bytes, bytes_per_token=weights_read + kv_read, bench_rss_bytes=p.head_bench,
        repack_bytes=int(head_share.weights_bytes * table.repack_share), kernel_family=w.dominant_type,
        efficiency=round(head.speed.efficiency * head.speed.factor(w.dominant_type), 4), per_token_overhead_s=round(p.overhead_s, 6),
        bytes_by_type=dict(sorted(by.items())), n_layer=table.n_layer, rows_per_token=table.rows,
        decode_tokens_per_s_low=s.decode_tokens_per_s_low, decode_tokens_per_s_high=s.decode_tokens_per_s_high,
    )


# --- one board or the group ---------------------------------------------------------------------


def choose(head: GroupNode, workers: list[GroupNode], singles: list[Plan], outcome: SplitOutcome, budget: Budget) -> Plan:
    """The group's plan. A split only when no board of the group meets the budget alone with a model
    at least as large (more parameters; a higher-bit quant of the same model is not worth a link):
    otherwise the board that does best alone keeps its own plan, unchanged. Why, in words."""
    order = [head, *workers]
    best_single: Plan | None = None
    for plan in singles:  # the largest model, then the most bits, then the fastest; the head first on a tie
        if plan.selected is None:
            continue
        if best_single is None or _rank(plan) > _rank(best_single):
            best_single = plan
    sel = outcome.best
    if sel is not None and outcome.split is not None and (best_single is None or _split_wins(sel, _selected(best_single))):
        split = outcome.split
        by_target = {n.target: n for n in split.nodes}
        counts = "/".join(str(by_target[n.target].layer_count) for n in order if n.target in by_target)
        names = [n.target for n in order if n.target in by_target]
        words = (f"{sel.model} {sel.quant} {alone_reason(sel.model, sel.quant, singles, budget)}; split {counts} layers across "
                 f"{_and(names)}: predicted {split.decode_tokens_per_s:.1f} tok/s of which {split.link_ms_per_token:.1f} ms/token on the link")
        if best_single is not None:
            b = _selected(best_single)
            how = ", streaming from storage" if b.mode == "stream" else ""
            words += f" (alone, the largest is {b.model} {b.quant} on {best_single.target} at {b.predicted.decode_tokens_per_s:.1f} tok/s{how})"
        split = replace(split, reason=words)
        return Plan(selected=replace(sel, notes=[words, *sel.notes]), candidates=outcome.candidates, basis=head.basis, budget=budget,
                    target=head.target, split=split, group_reason=words)
    if best_single is not None:
        b = _selected(best_single)
        usable = next(n.basis.usable_memory_bytes for n in order if n.target == best_single.target)
        words = (f"{b.model} {b.quant} fits {best_single.target} alone ({fmt_bytes(b.predicted.peak_memory_bytes)} of {fmt_bytes(usable)} "
                 f"usable, predicted {b.predicted.decode_tokens_per_s:.1f} tok/s): it stays on one board; ")
        words += (f"a split across {_and([n.target for n in order])} allows no larger model (its largest: {sel.model} {sel.quant})"
                  if sel is not None else f"no split across {_and([n.target for n in order])} meets the budget with a larger model")
        return replace(best_single, group_reason=words)
    head_plan = singles[0] if singles else None
    miss = outcome.nearest_miss or (head_plan.nearest_miss if head_plan else None)
    words = f"nothing fits any one board of {_and([n.target for n in order])} or the group split"
    if outcome.nearest_miss:
        words += f"; across the group the nearest is {outcome.nearest_miss}"
    return Plan(selected=None, candidates=outcome.candidates, basis=head.basis, budget=budget, target=head.target,
                nearest_miss=f"split across the group: {miss}" if miss else None, group_reason=words)


def alone_reason(model: str, quant: str, singles: list[Plan], budget: Budget) -> str:
    """Why no single board runs this model resident, in words: memory on every board (some may
    stream it from storage), or speed."""
    found = [(p, c) for p in singles for c in p.candidates if c.model == model and c.quant == quant]
    if not found:
        return "is not a candidate of any one board"
    memory = [(p, c) for p, c in found if any(r.startswith("needs") for r in c.reasons) or (c.fits and c.mode == "stream")]
    if len(memory) == len(found):
        roomiest = max(found, key=lambda pc: pc[0].basis.usable_memory_bytes)[0]
        failed = [c.predicted.peak_memory_bytes for _, c in memory if not c.fits and c.predicted is not None]
        needs = [_resident_need(n) for _, c in memory if c.fits for n in _notes(singles, c) if _resident_need(n)]
        need = f"needs {fmt_bytes(min(failed))}, " if failed else f"needs {needs[0]}, " if needs else ""
        streamed = [p.target for p, c in memory if c.fits and c.mode == "stream"]
        return (f"does not fit any one board ({need}best board {roomiest.target} {fmt_bytes(roomiest.basis.usable_memory_bytes)} usable"
                + (f"; {_and(streamed)} only by streaming it from storage every token" if streamed else "") + ")")
    slow = [(p, c) for p, c in found if c.predicted is not None and c.predicted.decode_ms_per_token > budget.decode_ms_per_token]
    if slow:
        p, c = min(slow, key=lambda pc: pc[1].predicted.decode_ms_per_token if pc[1].predicted else math.inf)
        assert c.predicted is not None
        return (f"is too slow on any one board that holds it (best: {p.target} at {c.predicted.decode_ms_per_token:.1f} ms/token, "
                f"budget {budget.decode_ms_per_token:g} ms)")
    p, c = found[0]
    return f"fits no one board alone ({p.target}: {'; '.join(c.reasons) or 'not selected'})"


def _split_wins(split: Selected, alone: Selected) -> bool:
    """More parameters than the best board alone, or as many but resident where that board would
    stream them from storage (make_plan prefers resident at equal size the same way)."""
    return split.params > alone.params or (split.params == alone.params and alone.mode == "stream")


def _resident_need(text: str) -> str:
    """'1.0 GiB' from the planner's memory reason 'needs 1.0 GiB with f16 KV ...' (the resident size)."""
    i = text.find("needs ")
    return text[i + 6:].split(" with ", 1)[0] if i >= 0 and " with " in text[i:] else ""


def _notes(singles: list[Plan], c: Candidate) -> list[str]:
    """A streaming plan's reason lives in its selected notes (its candidate fits)."""
    return [n for p in singles if p.selected is not None and (p.selected.model, p.selected.quant) == (c.model, c.quant)
            for n in p.selected.notes]


def _selected(plan: Plan) -> Selected:
    assert plan.selected is not None
    return plan.selected


def _rank(plan: Plan) -> tuple[int, float, float]:
    s = _selected(plan)
    return s.params, bits_per_weight(s.predicted.weights_bytes or s.file_bytes, s.params), s.predicted.decode_tokens_per_s


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
