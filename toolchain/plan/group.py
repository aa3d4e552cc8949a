"""A plan for a group of targets: each board's own plan (plan_for, unchanged), the split of the
same options across the group (plan/split.py), and the choice between them.

The first member is the head: the GGUF goes there, the bench runs there, and its target kind
decides whether only offline models count (as it would for a plan of the head alone).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from toolchain.core.errors import BadInputError
from toolchain.core.nouns import HostFacts, LinkFacts, Plan
from toolchain.plan.request import PlanRequest, plan_for, plan_inputs, plan_options
from toolchain.plan.split import GroupNode, choose, evaluate_split


@dataclass(frozen=True)
class GroupMember:
    facts: HostFacts
    target_kind: str = "ssh"
    board: str | None = None  # the target's board: (board database id), used where a measurement is missing
    link: LinkFacts | None = None  # head -> this member, measured; None for the head


def plan_group(members: list[GroupMember], req: PlanRequest) -> Plan:
    if len(members) < 2:
        raise BadInputError("a group plan needs two targets or more", "give --target twice or more, the head first")
    if req.overrides.backend != "cpu" or req.overrides.gpu_layers is not None:
        raise BadInputError("a split across boards plans llama.cpp's CPU backend on every board (for now)",
                            "leave out --backend and --gpu-layers, or plan one --target")
    missing = [m.facts.target for m in members[1:] if m.link is None]
    if missing:
        raise BadInputError(f"no measured link to {', '.join(missing)}", "plan the group with --target for each board (the links are measured)")
    from toolchain.plan.basis import build_basis
    from toolchain.plan.boards import load_boards, lookup_board

    head = members[0]
    _, options, offline = plan_inputs(req, target_kind=head.target_kind, target_board=head.board)
    same = replace(req, offline=offline)  # every board plans over the head's options
    boards = load_boards()
    nodes: list[GroupNode] = []
    singles: list[Plan] = []
    for m in members:
        board = lookup_board(boards, m.board) if m.board else None
        basis, speed, threads = build_basis(m.facts, board, req.overrides)
        nodes.append(GroupNode(m.facts.target, basis, speed, threads, m.link))
        singles.append(plan_for(m.facts, same, target_kind=m.target_kind, target_board=m.board))
    outcome = evaluate_split(options, nodes[0], nodes[1:], req.budget, plan_options(req, nodes[0].threads, offline))
    return choose(nodes[0], nodes[1:], singles, outcome, req.budget)
