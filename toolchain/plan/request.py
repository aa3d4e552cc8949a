"""What the user asked the planner for, built once: the CLI's options and a lab file's layered
settings go through build_plan_request, so anything one accepts the other accepts too (named
budgets from profiles/budgets.yaml, backends, defaults). plan_for turns facts + request into a Plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from toolchain.core.config import field as config_field
from toolchain.core.config import load_json, load_yaml
from toolchain.core.errors import BadInputError
from toolchain.core.nouns import Budget, HostFacts, Plan, Prediction, SplitPlacement
from toolchain.core.paths import profiles_dir
from toolchain.core.serde import from_dict
from toolchain.core.units import parse_budget, parse_duration_ms, parse_rate, parse_size
from toolchain.device.runner import BACKENDS
from toolchain.plan.basis import Overrides

if TYPE_CHECKING:
    from toolchain.plan.boards import BoardSpec
    from toolchain.plan.select import Option, PlanOptions

DEFAULT_BUDGET = "120ms"  # average human reading speed: 8.33 tokens/s


@dataclass(frozen=True)
class PlanRequest:
    budget: Budget
    budget_given: bool = True
    plan_file: Path | None = None  # ship a saved plan instead of planning
    ctx: int | None = None
    models: tuple[str, ...] = ()
    quants: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()
    allow_low_bit: bool = False
    offline: bool | None = None  # None: the target's default (local plans with what is here)
    overrides: Overrides = field(default_factory=Overrides)
    board: str | None = None


def build_plan_request(
    *, budget: str | None = None, ttft: str | None = None, ctx: int | None = None, models: list[str] | tuple[str, ...] = (),
    quants: list[str] | tuple[str, ...] = (), allow_low_bit: bool = False, offline: bool | None = None, board: str | None = None,
    ram: str | None = None, bandwidth: str | None = None, storage_read: str | None = None, bandwidth_share: float = 1.0,
    efficiency: float | None = None, backend: str = "cpu", threads: int | None = None, plan_file: Path | None = None,
    peak_bandwidth: str | None = None, device_class: str | None = None, gpu_layers: int | None = None,
    device_memory: str | None = None,
) -> PlanRequest:
    """User text -> PlanRequest. Raises BadInputError naming the option (callers add where it came from)."""
    if ctx is not None and ctx < 16:
        raise BadInputError(f"--ctx {ctx} is too small", "use at least 16 tokens, e.g. --ctx 4096")
    if threads is not None and threads < 1:
        raise BadInputError(f"--threads {threads} is too small", "use 1 or more, or leave it out for the big cores")
    if not 0 < bandwidth_share <= 1:
        raise BadInputError(f"--bandwidth-share {bandwidth_share} is outside (0, 1]", "e.g. 0.5 leaves half the bandwidth to other apps")
    if efficiency is not None and not (math.isfinite(efficiency) and 0 < efficiency <= 1.5):
        raise BadInputError(f"--efficiency {efficiency} is outside (0, 1.5]", "the fraction of bandwidth decode reaches, e.g. 0.8")
    if backend not in (*BACKENDS, AUTO):
        raise BadInputError(f"unknown backend {backend!r}", f"use {', '.join(BACKENDS)} or {AUTO}")
    if gpu_layers is not None and (gpu_layers < 0 or gpu_layers > 100000):
        raise BadInputError(f"--gpu-layers {gpu_layers} is not a layer count", "give 0 (all on the CPU) up to the model's layers")
    if gpu_layers is not None and backend == "cpu":
        raise BadInputError("--gpu-layers needs a GPU backend", "add --backend cuda, metal, vulkan, opencl or auto")
    paths, ids = [], []
    for m in models:
        if m.endswith(".gguf") or Path(m).is_file():
            paths.append(Path(m))
        else:
            ids.append(m)
    ov = Overrides(
        ram_bytes=parse_size(ram, "--ram") if ram else None,
        bandwidth_bytes_per_s=parse_rate(bandwidth, "--bandwidth") if bandwidth else None,
        peak_bandwidth_bytes_per_s=parse_rate(peak_bandwidth, "--peak-bandwidth") if peak_bandwidth else None,
        device_class=_device_class(device_class),
        storage_read_bytes_per_s=parse_rate(storage_read, "--storage-read") if storage_read else None,
        bandwidth_share=bandwidth_share, efficiency=efficiency, backend=backend, threads=threads, gpu_layers=gpu_layers,
        device_memory_bytes=parse_size(device_memory, "--device-memory") if device_memory else None,
    )
    return PlanRequest(budget=resolve_budget(budget or DEFAULT_BUDGET, ttft), budget_given=budget is not None, plan_file=plan_file,
                       ctx=ctx, models=tuple(ids), quants=tuple(quants), paths=tuple(paths), allow_low_bit=allow_low_bit,
                       offline=offline, overrides=ov, board=board)


def _device_class(name: str | None) -> str | None:
    from toolchain.plan.boards import DEVICE_CLASSES

    if name is not None and name not in DEVICE_CLASSES:
        from toolchain.core.config import unknown_name

        raise unknown_name("device class", name, DEVICE_CLASSES, f"--device-class is one of {', '.join(DEVICE_CLASSES)}")
    return name


def resolve_budget(text: str, ttft: str | None = None) -> Budget:
    """A profile name from profiles/budgets.yaml (e.g. `reading`) or a latency/rate (120ms, 8.33tok/s)."""
    budget = named_budget(text) or parse_budget(text)
    return replace(budget, ttft_ms=parse_duration_ms(ttft, "--ttft")) if ttft else budget


def named_budget(name: str) -> Budget | None:
    path = profiles_dir() / "budgets.yaml"
    if not name.replace("-", "").replace("_", "").isalpha() or not path.exists():
        return None
    budgets = load_yaml(path).get("budgets") or {}
    if not isinstance(budgets, dict) or name not in budgets:
        return None
    entry = budgets[name]
    where = f"{path}: budgets.{name}"
    if not isinstance(entry, dict):
        raise BadInputError(f"{where} should be a mapping", "give decode_ms_per_token (and optionally ttft_ms)")
    ttft = config_field(entry, "ttft_ms", float, where, optional=True)
    return Budget(decode_ms_per_token=config_field(entry, "decode_ms_per_token", float, where), ttft_ms=ttft, source=name)


def plan_for(facts: HostFacts | None, req: PlanRequest, *, target_kind: str = "local", target_board: str | None = None) -> Plan:
    """Facts (or a what-if board / overrides) + request -> Plan (the planner's decisions are pure: plan/select.py)."""
    from toolchain.plan.basis import build_basis
    from toolchain.plan.select import make_plan

    board, options, offline = plan_inputs(req, target_kind=target_kind, target_board=target_board)
    name = facts.target if facts else (board.id if board else "what-if")

    def one(backend: str) -> Plan:
        basis, speed, threads = build_basis(facts, board, replace(req.overrides, backend=backend))
        return make_plan(options, basis, speed, req.budget, plan_options(req, threads, offline), target=name)

    if req.overrides.backend != AUTO:
        return one(req.overrides.backend)
    plans = [one(b) for b in auto_backends(facts, board)]
    best = max(plans, key=_auto_rank)
    if best.selected is not None and len(plans) > 1:
        others = ", ".join(f"{p.basis.backend} {p.selected.predicted.decode_tokens_per_s:.1f} tok/s ({p.selected.model} {p.selected.quant})"
                           for p in plans if p.selected is not None and p is not best)
        note = f"--backend auto: {best.basis.backend}, the fastest backend the runtime has" + (f" (beside {others})" if others else "")
        best = replace(best, selected=replace(best.selected, notes=[*best.selected.notes, note]))
    return best


def plan_inputs(req: PlanRequest, *, target_kind: str = "local", target_board: str | None = None) -> tuple[BoardSpec | None, list[Option], bool]:
    """What every plan of a request starts from: the board database entry (what-if or the target's
    board:), the (model, quant) options, and whether only offline models count (plan/group.py
    plans several boards from the same)."""
    from toolchain.models.catalog import load_catalog
    from toolchain.models.sources import offline_sources
    from toolchain.plan.basis import build_options
    from toolchain.plan.boards import load_boards, lookup_board

    board_id = req.board or target_board
    board = lookup_board(load_boards(), board_id) if board_id else None
    offline = req.offline if req.offline is not None else target_kind == "local"
    options = build_options(load_catalog(), offline_sources(), models=req.models, quants=req.quants, paths=req.paths)
    _check_gpu_layers(req, options)
    return board, options, offline


def plan_options(req: PlanRequest, threads: int, offline: bool) -> PlanOptions:
    from toolchain.plan.select import PlanOptions

    return PlanOptions(ctx=req.ctx, threads=threads, allow_low_bit=req.allow_low_bit, require_available=offline)


AUTO = "auto"


def auto_backends(facts: HostFacts | None, board: object | None) -> list[str]:
    """What --backend auto chooses among: the backends the board's llama.cpp really loads (the
    probe's registry listing), else the board database's, the CPU always."""
    have = [b for b in (facts.runtime.llama_cpp_backends if facts is not None else []) if b in BACKENDS]
    if not have and facts is None and board is not None:
        have = [b for b in getattr(board, "backends", []) if b in BACKENDS]
    return list(dict.fromkeys(["cpu", *have]))


def _auto_rank(plan: Plan) -> tuple[int, float]:
    """The largest model that fits, then the fastest."""
    sel = plan.selected
    return (sel.params, sel.predicted.decode_tokens_per_s) if sel is not None else (-1, 0.0)


def _check_gpu_layers(req: PlanRequest, options: list[Option]) -> None:
    n = req.overrides.gpu_layers
    if n is None or not options:
        return
    most = max(o.entry.arch.n_layer for o in options)
    if n > most:
        names = sorted({o.entry.id for o in options if o.entry.arch.n_layer == most})
        raise BadInputError(f"--gpu-layers {n} is more than the {most} layers of {', '.join(names[:3])}",
                            f"give at most {most} (all of them), or leave --gpu-layers out to offload as many as fit")


def load_plan(req: PlanRequest) -> Plan:
    """A saved `plan --json` document, checked against its schema (a plan file is an artifact anyone
    who can open a pull request may have written): types, finite numbers in range, identifiers for
    the model and the quant. --budget, when given, replaces the plan's budget."""
    assert req.plan_file is not None
    plan = plan_from_document(load_json(req.plan_file, "plan", _PLAN_HINT), str(req.plan_file))
    return replace(plan, budget=req.budget) if req.budget_given else plan


_PLAN_HINT = "write one with: edgedeploy plan ... --json > plan.json"


def plan_from_document(doc: object, where: str) -> Plan:
    """A plan as `plan --json` (or a report's "plan") holds it, checked as load_plan checks a file."""
    plan = _from_document(Plan, doc, where, "plan", _PLAN_HINT)
    _check_plan(plan, where)
    return plan


def load_facts(path: Path) -> HostFacts:
    """A saved `probe --json` document, checked as load_plan checks a plan at the fields the planner reads."""
    hint = "write one with: edgedeploy probe TARGET --json > facts.json"
    facts = _from_document(HostFacts, load_json(path, "probe", hint), str(path), "probe", hint)
    _check_facts(facts, str(path))
    return facts


_T = TypeVar("_T")


def _from_document(cls: type[_T], doc: object, where: str, kind: str, hint: str) -> _T:
    from toolchain.core.serde import SchemaError

    try:
        return from_dict(cls, doc, strict=True, where="")
    except SchemaError as exc:
        at = exc.where or "the document"
        raise BadInputError(f"{where}: {at}: {exc.problem}", f"not a {kind} JSON document as edgedeploy writes it; {hint}") from exc
    except RecursionError as exc:
        raise BadInputError(f"{where}: not a {kind} JSON document (nested too deeply)", hint) from exc


def _check(ok: bool, where: str, field_name: str, value: object, rule: str) -> None:
    if not ok:
        from toolchain.core.identifiers import shown

        raise BadInputError(f"{where}: {field_name} is {shown(value)}: {rule}",
                            "the document was edited or damaged; write it again with edgedeploy")


def _check_prediction(p: Prediction, where: str, at: str) -> None:
    _check(p.decode_tokens_per_s > 0, where, f"{at}.decode_tokens_per_s", p.decode_tokens_per_s, "should be above 0")
    _check(p.decode_ms_per_token > 0, where, f"{at}.decode_ms_per_token", p.decode_ms_per_token, "should be above 0")
    for name in ("prefill_tokens_per_s", "efficiency", "per_token_overhead_s", "peak_memory_bytes", "weights_bytes", "kv_bytes",
                 "compute_bytes", "overhead_bytes", "bytes_per_token", "streamed_bytes_per_token", "bench_rss_bytes", "repack_bytes", "n_layer",
                 "decode_tokens_per_s_low", "decode_tokens_per_s_high"):
        value = getattr(p, name)
        _check(value >= 0, where, f"{at}.{name}", value, "should be 0 or more")
    _check(p.decode_tokens_per_s_low <= p.decode_tokens_per_s_high, where, f"{at}.decode_tokens_per_s_low", p.decode_tokens_per_s_low,
           "should not be above decode_tokens_per_s_high")
    for t, n in p.bytes_by_type.items():
        _check(n >= 0, where, f"{at}.bytes_by_type[{t!r}]", n, "should be 0 or more")


def _check_plan(plan: Plan, where: str) -> None:
    from toolchain.core.identifiers import check_model_id, check_quant

    sel = plan.selected
    if sel is not None:
        check_model_id(sel.model, f"{where}: selected.model")
        check_quant(sel.quant, f"{where}: selected.quant")
        check_quant(sel.kv_type, f"{where}: selected.kv_type")
        _check(sel.ctx >= 16, where, "selected.ctx", sel.ctx, "should be 16 or more")
        _check(sel.threads >= 1, where, "selected.threads", sel.threads, "should be 1 or more")
        _check(sel.mode in ("resident", "stream"), where, "selected.mode", sel.mode, "should be resident or stream")
        for name in ("params", "file_bytes"):
            _check(getattr(sel, name) >= 0, where, f"selected.{name}", getattr(sel, name), "should be 0 or more")
        _check(sel.gguf_path is None or (sel.gguf_path != "" and "\0" not in sel.gguf_path), where, "selected.gguf_path",
               sel.gguf_path, "should be a file path")
        _check_prediction(sel.predicted, where, "selected.predicted")
    for i, c in enumerate(plan.candidates):
        check_model_id(c.model, f"{where}: candidates[{i}].model")
        check_quant(c.quant, f"{where}: candidates[{i}].quant")
        for name in ("params", "file_bytes", "ctx"):
            _check(getattr(c, name) >= 0, where, f"candidates[{i}].{name}", getattr(c, name), "should be 0 or more")
        if c.predicted is not None:
            _check_prediction(c.predicted, where, f"candidates[{i}].predicted")
    b = plan.basis
    _check(b.usable_memory_bytes >= 0, where, "basis.usable_memory_bytes", b.usable_memory_bytes, "should be 0 or more")
    _check(b.bandwidth_bytes_per_s > 0, where, "basis.bandwidth_bytes_per_s", b.bandwidth_bytes_per_s, "should be above 0")
    _check(b.efficiency > 0, where, "basis.efficiency", b.efficiency, "should be above 0")
    for name in ("per_token_overhead_s", "compute_flops_per_s"):
        _check(getattr(b, name) >= 0, where, f"basis.{name}", getattr(b, name), "should be 0 or more")
    _check(b.storage_read_bytes_per_s is None or b.storage_read_bytes_per_s > 0, where, "basis.storage_read_bytes_per_s",
           b.storage_read_bytes_per_s, "should be above 0 (or null)")
    _check(plan.budget.decode_ms_per_token > 0, where, "budget.decode_ms_per_token", plan.budget.decode_ms_per_token, "should be above 0")
    _check(plan.budget.ttft_ms is None or plan.budget.ttft_ms > 0, where, "budget.ttft_ms", plan.budget.ttft_ms, "should be above 0 (or null)")
    if plan.split is not None:
        _check_split(plan.split, where)


def _check_split(sp: SplitPlacement, where: str) -> None:
    """A split's shares are what a ship starts rpc-servers and passes --tensor-split from: contiguous
    layer runs covering the model, one head last, addresses that are addresses."""
    from toolchain.probe.link import check_address

    _check(len(sp.nodes) >= 2, where, "split.nodes", len(sp.nodes), "should hold a head and at least one worker")
    _check(0 < sp.n_layer <= 100000, where, "split.n_layer", sp.n_layer, "should be a layer count")
    at = 0
    for i, n in enumerate(sp.nodes):
        head = i == len(sp.nodes) - 1
        _check(n.role == ("head" if head else "worker"), where, f"split.nodes[{i}].role", n.role,
               "should be worker for every node but the last, which is the head")
        _check(n.target != "" and "\0" not in n.target, where, f"split.nodes[{i}].target", n.target, "should name a target")
        _check(n.layer_first == at and n.layer_count >= (0 if head else 1), where, f"split.nodes[{i}].layer_first", n.layer_first,
               f"should continue the previous node's layers (at {at}) with a count of {0 if head else 1} or more")
        at += n.layer_count
        _check(n.threads >= 1, where, f"split.nodes[{i}].threads", n.threads, "should be 1 or more")
        if not head:
            check_address(n.address, f"{where}: split.nodes[{i}].address")
        for name in ("memory_bytes", "usable_memory_bytes", "weights_bytes", "kv_bytes", "compute_bytes", "runtime_bytes",
                     "read_bytes_per_token", "read_bytes_per_s", "decode_ms_per_token", "link_ms_per_token", "link_bytes_per_token"):
            _check(getattr(n, name) >= 0, where, f"split.nodes[{i}].{name}", getattr(n, name), "should be 0 or more")
    _check(at == sp.n_layer, where, "split.nodes", at, f"should cover the model's {sp.n_layer} layers")
    _check(sp.tensor_split == [n.layer_count + (1 if n.role == "head" else 0) for n in sp.nodes], where, "split.tensor_split",
           sp.tensor_split, "should be each node's layer count, the head's + 1 for the output layer")
    _check(sp.n_gpu_layers == sp.n_layer + 1, where, "split.n_gpu_layers", sp.n_gpu_layers, "should be n_layer + 1")
    for name in ("compute_ms_per_token", "link_ms_per_token", "link_round_trips_per_token", "link_bytes_per_token",
                 "decode_tokens_per_s_low", "decode_tokens_per_s_high"):
        _check(getattr(sp, name) >= 0, where, f"split.{name}", getattr(sp, name), "should be 0 or more")
    _check(sp.decode_ms_per_token > 0 and sp.decode_tokens_per_s > 0, where, "split.decode_ms_per_token", sp.decode_ms_per_token,
           "should be above 0")
    for i, link in enumerate(sp.links):
        check_address(link.address, f"{where}: split.links[{i}].address")
        _check(0 < link.rtt_min_s <= link.rtt_s <= link.rtt_p90_s and link.throughput_bytes_per_s > 0, where, f"split.links[{i}]",
               link.rtt_s, "should have 0 < rtt_min_s <= rtt_s <= rtt_p90_s and a throughput above 0")


def _check_facts(facts: HostFacts, where: str) -> None:
    m, cpu = facts.memory, facts.cpu
    for name in ("total_bytes", "available_bytes", "usable_bytes", "reserve_bytes", "swap_total_bytes", "zram_bytes", "swap_free_bytes"):
        _check(getattr(m, name) >= 0, where, f"memory.{name}", getattr(m, name), "should be 0 or more")
    for name in ("cgroup_limit_bytes", "cgroup_usage_bytes", "lmk_minfree_bytes"):
        value = getattr(m, name)
        _check(value is None or value >= 0, where, f"memory.{name}", value, "should be 0 or more (or null)")
    _check(cpu.cores >= 1, where, "cpu.cores", cpu.cores, "should be 1 or more")
    _check(cpu.recommended_threads >= 1, where, "cpu.recommended_threads", cpu.recommended_threads, "should be 1 or more")
    for i, c in enumerate(cpu.clusters):
        _check(c.cores >= 0, where, f"cpu.clusters[{i}].cores", c.cores, "should be 0 or more")
        _check(c.max_mhz is None or c.max_mhz >= 0, where, f"cpu.clusters[{i}].max_mhz", c.max_mhz, "should be 0 or more (or null)")
    for at, value in (("bandwidth.read_bytes_per_s", facts.bandwidth.read_bytes_per_s),
                      ("bandwidth.read_1t_bytes_per_s", facts.bandwidth.read_1t_bytes_per_s),
                      ("storage.read_bytes_per_s", facts.storage.read_bytes_per_s),
                      ("storage.free_bytes", facts.storage.free_bytes)):
        _check(value is None or value >= 0, where, at, value, "should be 0 or more (or null)")
    _check(facts.bandwidth.threads is None or facts.bandwidth.threads >= 1, where, "bandwidth.threads", facts.bandwidth.threads,
           "should be 1 or more (or null)")
    for i, a in enumerate(facts.accelerators):
        _check(a.memory_bytes is None or a.memory_bytes >= 0, where, f"accelerators[{i}].memory_bytes", a.memory_bytes,
               "should be 0 or more (or null)")
