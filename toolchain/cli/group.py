"""`edgedeploy plan --target A --target B ...`: probe each board, measure the links from the head
(the first --target) to the others, plan the group (plan/group.py), and show the split's basis."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from toolchain.cli import console as ui
from toolchain.core.errors import BadInputError
from toolchain.core.nouns import Plan, TargetSpec
from toolchain.core.units import fmt_bytes, fmt_rate

if TYPE_CHECKING:
    from toolchain.plan.request import PlanRequest


def same_target(a: TargetSpec, b: TargetSpec) -> bool:
    """Two --target values naming one board (a board twice in a group would be split with itself)."""
    if a.name == b.name:
        return True
    key = ("kind", "host", "port", "user", "adb_serial", "device")
    return a.kind == b.kind and all(getattr(a, k) == getattr(b, k) for k in key) and a.kind in ("local", "adb", "serial", "ssh")


def resolve_group(targets: list[str]) -> list[TargetSpec]:
    """The --target values of a group, each board once (the first is the head)."""
    from toolchain.transports.targets import resolve_target

    specs = [resolve_target(t) for t in targets]
    for i, s in enumerate(specs):
        for j in range(i):
            if same_target(specs[j], s):
                raise BadInputError(f"--target {targets[i]} names the same board as --target {targets[j]}",
                                    "list each board of the group once; the first --target is the head")
    return specs


def plan_targets(targets: list[str], req: PlanRequest, *, fresh_links: bool = False) -> Plan:
    from toolchain.deploy.group import group_members, probe_for_plan
    from toolchain.plan.group import plan_group
    from toolchain.transports.factory import connect

    specs = resolve_group(targets)
    events = ui.ConsoleEvents()
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(connect(s)) for s in specs]
        facts = [probe_for_plan(s, t, events) for s, t in zip(specs, conns, strict=True)]
        members = group_members(specs, conns, facts, events, fresh_links=fresh_links)
    return plan_group(members, req)


def render_group(plan: Plan, every: bool = False) -> None:
    """The split's basis per node (layers, memory, ms/token), the link, the total; or the board's
    own plan with why it stays on one board."""
    from toolchain.cli.render_plan import render_plan

    split = plan.split
    if split is None:
        render_plan(plan, every)
        if plan.group_reason:
            ui.err.print(f"group: {plan.group_reason}", markup=False)
        return
    from rich.table import Table

    t = Table(show_lines=False)
    for col in ("node", "role", "layers", "memory", "read rate", "ms/token", "link ms/token", "basis"):
        t.add_column(col)
    for n in split.nodes:
        layers = f"{n.layer_first}-{n.layer_first + n.layer_count - 1}" if n.layer_count else "-"
        layers += " + output" if n.output_layer else ""
        t.add_row(n.target + (f" ({n.address})" if n.address else ""), n.role, f"{layers} ({n.layer_count})",
                  f"{fmt_bytes(n.memory_bytes)} of {fmt_bytes(n.usable_memory_bytes)}", fmt_rate(n.read_bytes_per_s),
                  f"{n.decode_ms_per_token:.1f}", f"{n.link_ms_per_token:.2f}" if n.role == "worker" else "-", n.confidence)
    ui.err.print(t)
    for link in split.links:
        ui.err.print(f"link {link.head} -> {link.worker} ({link.address}): round trip {link.rtt_s * 1000:.3f} ms "
                     f"(p90 {link.rtt_p90_s * 1000:.3f}), {fmt_rate(link.throughput_bytes_per_s)}; {link.method}", markup=False)
    s = plan.selected
    assert s is not None
    ui.err.print(f"total: {split.compute_ms_per_token:.1f} ms/token on the boards + {split.link_ms_per_token:.2f} ms/token on the link "
                 f"({split.link_round_trips_per_token} round trip(s), {fmt_bytes(split.link_bytes_per_token)} per token) = "
                 f"{split.decode_ms_per_token:.1f} ms/token ({split.decode_tokens_per_s:.1f} tok/s, "
                 f"{split.decode_tokens_per_s_low:.1f}-{split.decode_tokens_per_s_high:.1f} expected); budget "
                 f"{plan.budget.decode_ms_per_token:g} ms/token", markup=False)
    ui.err.print(f"selected: {s.model} {s.quant}, ctx {s.ctx}, KV {s.kv_type}; llama.cpp: devices in the order above, "
                 f"--tensor-split {','.join(str(x) for x in split.tensor_split)}, n_gpu_layers {split.n_gpu_layers}", markup=False)
    ui.err.print(f"group: {plan.group_reason}", markup=False)
