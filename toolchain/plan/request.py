"""What the user asked the planner for, built once: the CLI's options and a lab file's layered
settings go through build_plan_request, so anything one accepts the other accepts too (named
budgets from profiles/budgets.yaml, backends, defaults). plan_for turns facts + request into a Plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolchain.core.config import field as config_field
from toolchain.core.config import load_yaml
from toolchain.core.errors import BadInputError
from toolchain.core.nouns import Budget, HostFacts, Plan
from toolchain.core.paths import profiles_dir
from toolchain.core.serde import from_dict
from toolchain.core.units import parse_budget, parse_duration_ms, parse_rate, parse_size
from toolchain.plan.basis import BACKENDS, Overrides

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
    if backend not in BACKENDS:
        raise BadInputError(f"unknown backend {backend!r}", f"use {', '.join(BACKENDS)}")
    paths, ids = [], []
    for m in models:
        if m.endswith(".gguf") or Path(m).is_file():
            paths.append(Path(m))
        else:
            ids.append(m)
    ov = Overrides(
        ram_bytes=parse_size(ram, "--ram") if ram else None,
        bandwidth_bytes_per_s=parse_rate(bandwidth, "--bandwidth") if bandwidth else None,
        storage_read_bytes_per_s=parse_rate(storage_read, "--storage-read") if storage_read else None,
        bandwidth_share=bandwidth_share, efficiency=efficiency, backend=backend, threads=threads,
    )
    return PlanRequest(budget=resolve_budget(budget or DEFAULT_BUDGET, ttft), budget_given=budget is not None, plan_file=plan_file,
                       ctx=ctx, models=tuple(ids), quants=tuple(quants), paths=tuple(paths), allow_low_bit=allow_low_bit,
                       offline=offline, overrides=ov, board=board)


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
    from toolchain.models.catalog import load_catalog
    from toolchain.models.sources import offline_sources
    from toolchain.plan.basis import build_basis, build_options
    from toolchain.plan.boards import BoardSpec, load_boards, lookup_board
    from toolchain.plan.select import PlanOptions, make_plan

    board_id = req.board or target_board
    board: BoardSpec | None = lookup_board(load_boards(), board_id) if board_id else None
    basis, speed, threads = build_basis(facts, board, req.overrides)
    offline = req.offline if req.offline is not None else target_kind == "local"
    options = build_options(load_catalog(), offline_sources(), models=req.models, quants=req.quants, paths=req.paths)
    opts = PlanOptions(ctx=req.ctx, threads=threads, allow_low_bit=req.allow_low_bit, require_available=offline)
    return make_plan(options, basis, speed, req.budget, opts, target=facts.target if facts else (board.id if board else "what-if"))


def load_plan(req: PlanRequest) -> Plan:
    """A saved `plan --json` document; --budget, when given, replaces the plan's budget."""
    assert req.plan_file is not None
    try:
        plan = from_dict(Plan, json.loads(req.plan_file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BadInputError(f"{req.plan_file}: not a plan JSON document ({exc})", "write one with: edgedeploy plan ... --json > plan.json") from exc
    return replace(plan, budget=req.budget) if req.budget_given else plan
