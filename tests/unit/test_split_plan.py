"""A model split across boards (plan/split.py, plan/group.py): layers shared by what each board
holds and streams, the hop cost per token, the choice between one board and the group, the plan
document, and the link figures (probe/link.py, pure parts)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tests.unit.test_gpu_placement import x86_facts
from toolchain.cli.group import same_target
from toolchain.core.errors import BadInputError, TargetError
from toolchain.core.nouns import Basis, Budget, LinkFacts, Plan, TargetSpec
from toolchain.core.serde import to_json_dict
from toolchain.models.catalog import load_catalog
from toolchain.plan.group import GroupMember, plan_group
from toolchain.plan.request import build_plan_request, plan_from_document
from toolchain.plan.select import Option, PlanOptions, make_plan, weights_for
from toolchain.plan.sizing import SpeedBasis
from toolchain.plan.split import (
    HIDDEN_BYTES_PER_VALUE,
    ROUND_TRIPS_PER_WORKER,
    GroupNode,
    Placed,
    assign_layers,
    choose,
    evaluate_split,
    hop_bytes,
    layer_table,
    place,
)
from toolchain.probe.link import check_address, link_from

GiB = 1 << 30
CAT = load_catalog()
OPTS = PlanOptions(threads=4)
BIG = Budget(decode_ms_per_token=1000.0)


def link(worker: str, rtt: float = 0.0003, throughput: float = 117e6, address: str = "10.0.0.2") -> LinkFacts:
    return LinkFacts(head="A", worker=worker, address=address, rtt_s=rtt, rtt_p90_s=rtt * 1.3, rtt_min_s=rtt * 0.8,
                     throughput_bytes_per_s=throughput)


def node(name: str, usable: float, *, bw: float = 10e9, head: bool = False, rtt: float = 0.0003, address: str = "10.0.0.2") -> GroupNode:
    basis = Basis(usable_memory_bytes=int(usable), bandwidth_bytes_per_s=bw, efficiency=0.85)
    speed = SpeedBasis(bw, 0.85, 1e11, 0.002, per_layer_overhead_s=3e-5, interval=(0.8, 1.2))
    return GroupNode(name, basis, speed, 4, None if head else link(name, rtt, address=address))


def options(*pairs: tuple[str, str]) -> list[Option]:
    return [Option(CAT[m], q, None, "pypi") for m, q in pairs]


LADDER = options(("llama-3.2-3b-instruct", "Q4_K_M"), ("llama-3.2-1b-instruct", "Q4_K_M"), ("llama-3.2-1b-instruct", "Q8_0"))


def group_plan(head: GroupNode, workers: list[GroupNode], opts: list[Option] = LADDER, budget: Budget = BIG) -> Plan:
    singles = [make_plan(opts, n.basis, n.speed, budget, OPTS, target=n.target) for n in (head, *workers)]
    return choose(head, workers, singles, evaluate_split(opts, head, workers, budget, OPTS), budget)


def placed(head: GroupNode, workers: list[GroupNode], model: str = "llama-3.2-3b-instruct", quant: str = "Q4_K_M") -> Placed:
    (opt,) = options((model, quant))
    table = layer_table(opt, weights_for(opt), 4096, "f16", OPTS, frozenset())
    p = place(table, head, workers)
    assert isinstance(p, Placed), p
    return p


# --- shares ---------------------------------------------------------------------------------------


def test_assign_layers_is_proportional_and_capped() -> None:
    assert assign_layers(30, [100, 100], [2.0, 1.0], [True, False]) == [20, 10]
    assert assign_layers(30, [12, 100], [2.0, 1.0], [True, False]) == [12, 18]  # the capped node gets its cap, the rest goes on
    assert assign_layers(28, [10, 10, 10], [1.0, 1.0, 1.0], [True, True, False]) == [10, 9, 9]
    assert assign_layers(30, [10, 10], [1.0, 1.0], [True, False]) is None  # the caps cannot hold the model
    assert assign_layers(3, [0, 10], [1.0, 1.0], [True, False]) is None  # a worker that must take a layer has no room


def test_layers_follow_memory_and_speed() -> None:
    even = placed(node("A", 2 * GiB, head=True), [node("B", 2 * GiB)]).split
    roomy = placed(node("A", 2 * GiB, head=True), [node("B", 4 * GiB)]).split
    fast = placed(node("A", 2 * GiB, head=True), [node("B", 2 * GiB, bw=20e9)]).split
    worker = [s.nodes[0].layer_count for s in (even, roomy, fast)]
    assert all(s.nodes[0].role == "worker" and s.nodes[-1].role == "head" for s in (even, roomy, fast))
    assert worker[1] > worker[0] and worker[2] > worker[0]  # more room, or a faster read, takes more layers
    # the head holds the token embeddings and the output beside its layers, so an even pair gives the worker more
    assert even.nodes[0].layer_count >= even.nodes[1].layer_count
    for s in (even, roomy, fast):
        assert sum(n.layer_count for n in s.nodes) == 28 and s.tensor_split == [s.nodes[0].layer_count, s.nodes[1].layer_count + 1]
        assert s.n_gpu_layers == 29 and s.nodes[1].layer_first == s.nodes[0].layer_count
        assert all(n.memory_bytes <= n.usable_memory_bytes for n in s.nodes)


# --- one board or the group ---------------------------------------------------------------------


def test_a_model_one_board_can_do_stays_on_one_board() -> None:
    head, worker = node("A", 4 * GiB, head=True), node("B", 4 * GiB)
    p = group_plan(head, [worker])
    alone = make_plan(LADDER, head.basis, head.speed, BIG, OPTS, target="A")
    assert p.split is None and p.selected is not None and p.target == "A"
    assert replace(p, group_reason="") == alone  # the board's own plan, unchanged
    assert "llama-3.2-3b-instruct Q4_K_M fits A alone" in p.group_reason and "stays on one board" in p.group_reason


def test_too_big_for_any_board_alone_but_right_for_two_is_split() -> None:
    head, worker = node("A", 1.9 * GiB, head=True), node("B", 1.9 * GiB)
    p = group_plan(head, [worker])
    assert p.selected is not None and p.split is not None
    assert (p.selected.model, p.selected.quant) == ("llama-3.2-3b-instruct", "Q4_K_M")
    s = p.split
    counts = {n.target: n.layer_count for n in s.nodes}
    assert p.group_reason.startswith("llama-3.2-3b-instruct Q4_K_M does not fit any one board (needs 2.1 GiB, best board A 1.9 GiB usable); "
                                     f"split {counts['A']}/{counts['B']} layers across A and B: predicted {s.decode_tokens_per_s:.1f} tok/s "
                                     f"of which {s.link_ms_per_token:.1f} ms/token on the link"), p.group_reason
    assert "alone, the largest is llama-3.2-1b-instruct Q8_0 on A" in p.group_reason and s.reason == p.group_reason
    assert s.link_round_trips_per_token == ROUND_TRIPS_PER_WORKER and s.nodes[0].address == "10.0.0.2"
    pred = p.selected.predicted
    assert pred.decode_ms_per_token == s.decode_ms_per_token == pytest.approx(s.compute_ms_per_token + s.link_ms_per_token, abs=0.01)
    assert pred.decode_tokens_per_s_low < pred.decode_tokens_per_s < pred.decode_tokens_per_s_high
    assert pred.peak_memory_bytes == s.nodes[-1].memory_bytes  # the runner's process is the head's
    # one board alone would have to read all of it at the same rate: the split is no faster than that
    alone = make_plan(LADDER, replace(head.basis, usable_memory_bytes=8 * GiB), head.speed, BIG, OPTS)
    assert alone.selected is not None and alone.selected.model == "llama-3.2-3b-instruct"
    assert s.decode_ms_per_token > alone.selected.predicted.decode_ms_per_token


def test_the_hop_cost_grows_with_the_round_trip() -> None:
    near = placed(node("A", 1.9 * GiB, head=True), [node("B", 1.9 * GiB, rtt=0.0003)]).split
    far = placed(node("A", 1.9 * GiB, head=True), [node("B", 1.9 * GiB, rtt=0.005)]).split
    assert far.compute_ms_per_token == near.compute_ms_per_token
    assert far.link_ms_per_token - near.link_ms_per_token == pytest.approx(ROUND_TRIPS_PER_WORKER * (5.0 - 0.3), abs=0.002)
    assert far.decode_ms_per_token > near.decode_ms_per_token
    # the bytes: the hidden state out and back, the mask, the position and the commands
    (opt,) = options(("llama-3.2-3b-instruct", "Q4_K_M"))
    table = layer_table(opt, weights_for(opt), 4096, "f16", OPTS, frozenset())
    to_w, from_w = hop_bytes(table, 0, 14)
    assert from_w == 8 + HIDDEN_BYTES_PER_VALUE * 3072 and 3072 * 4 + 4 * 256 < to_w < 3072 * 4 + 4 * 256 + 2000
    assert near.link_bytes_per_token == to_w + from_w
    # a link slow enough to miss the budget rules the split out, saying how much of it is the link's
    head, slow = node("A", 1.9 * GiB, head=True), node("B", 1.9 * GiB, rtt=0.2)
    out = evaluate_split(LADDER, head, [slow], Budget(400.0), OPTS)
    big = next(c for c in out.candidates if c.model == "llama-3.2-3b-instruct")
    assert not big.fits and any(r.startswith("split predicted ") and "ms of it on the link" in r for r in big.reasons), big.reasons
    p = group_plan(head, [slow], budget=Budget(400.0))
    assert p.split is None and p.selected is not None and p.selected.model == "llama-3.2-1b-instruct"
    assert "stays on one board" in p.group_reason


def test_even_the_group_cannot_hold_it() -> None:
    p = group_plan(node("A", 1.0 * GiB, head=True), [node("B", 1.0 * GiB)], opts=options(("llama-3.1-8b-instruct", "Q4_K_M")))
    assert p.selected is None and p.split is None
    assert p.nearest_miss and p.nearest_miss.startswith("split across the group: llama-3.1-8b-instruct Q4_K_M: needs ")
    assert "across A+B" in p.nearest_miss and "nothing fits any one board of A and B or the group split" in p.group_reason


def test_three_boards_and_the_fewest_that_hold_it() -> None:
    head = node("A", 1.2 * GiB, head=True)
    b, c = node("B", 1.2 * GiB, address="10.0.0.2"), node("C", 1.2 * GiB, address="10.0.0.3")
    p = group_plan(head, [b, c])
    assert p.split is not None and [n.target for n in p.split.nodes] == ["B", "C", "A"]  # llama.cpp's order: workers, then the head
    assert p.split.link_round_trips_per_token == 2 and len(p.split.links) == 2
    assert sum(n.layer_count for n in p.split.nodes) == 28 and all(n.memory_bytes <= n.usable_memory_bytes for n in p.split.nodes)
    assert p.group_reason.count("/") >= 2 and "across A, B and C" in p.group_reason
    # with room on two of them, the third adds only a hop and its fixed costs: it is left out
    roomy = group_plan(node("A", 1.9 * GiB, head=True), [node("B", 1.9 * GiB), node("C", 1.9 * GiB, address="10.0.0.3")])
    assert roomy.split is not None and len(roomy.split.nodes) == 2 and roomy.split.link_round_trips_per_token == 1


# --- from facts, and the plan document ---------------------------------------------------------------


def test_plan_group_from_facts_and_its_document_round_trips() -> None:
    f = x86_facts()
    small = replace(f.memory, usable_bytes=int(1.9 * GiB))
    a, b = replace(f, target="A", memory=small), replace(f, target="B", memory=small)
    req = build_plan_request(budget="1s", models=["llama-3.2-3b-instruct", "llama-3.2-1b-instruct"], quants=["Q4_K_M"], offline=False)
    p = plan_group([GroupMember(a, "ssh"), GroupMember(b, "ssh", link=link("B"))], req)
    assert p.split is not None and p.selected is not None and p.selected.model == "llama-3.2-3b-instruct"
    doc = json.loads(json.dumps(to_json_dict(p)))
    assert doc["split"]["tensor_split"] == p.split.tensor_split and doc["group_reason"] == p.group_reason
    assert plan_from_document(doc, "plan.json") == p
    bad = json.loads(json.dumps(doc))
    bad["split"]["tensor_split"] = [1, 1]
    with pytest.raises(BadInputError, match=r"split.tensor_split"):
        plan_from_document(bad, "plan.json")
    bad = json.loads(json.dumps(doc))
    bad["split"]["nodes"][0]["address"] = "10.0.0.2; reboot"
    with pytest.raises(BadInputError, match="is not an address"):
        plan_from_document(bad, "plan.json")
    with pytest.raises(BadInputError, match="CPU backend"):
        plan_group([GroupMember(a, "ssh"), GroupMember(b, "ssh", link=link("B"))], replace(req, overrides=replace(req.overrides, backend="cuda")))
    with pytest.raises(BadInputError, match="no measured link to B"):
        plan_group([GroupMember(a, "ssh"), GroupMember(b, "ssh")], req)


# --- the link's figures ----------------------------------------------------------------------------


def test_link_figures_from_the_probe() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    doc = {"rtts": 200, "rtt_min_s": 0.0002, "rtt_median_s": 0.0003, "rtt_p90_s": 0.0005, "bulk_bytes": 4 << 20, "bulk_s": [0.0403, 0.0353, 0.0383]}
    lf = link_from(doc, head="A", worker="B", address="10.0.0.2", measured_at=at)
    assert lf.throughput_bytes_per_s == pytest.approx((4 << 20) / (0.0383 - 0.0003))  # median bulk time less its acknowledgement
    assert (lf.rtt_s, lf.rtt_p90_s, lf.rtt_min_s, lf.samples) == (0.0003, 0.0005, 0.0002, 200) and lf.measured_at == "2026-01-02T00:00:00+00:00"
    for broken in ({**doc, "rtt_min_s": 0.001}, {**doc, "bulk_s": []}, {k: v for k, v in doc.items() if k != "rtts"}, [1, 2]):
        with pytest.raises(TargetError):
            link_from(broken, head="A", worker="B", address="10.0.0.2", measured_at=at)
    assert check_address("10.0.0.2", "B") == "10.0.0.2" and check_address("fe80::1%eth0", "B") == "fe80::1"
    assert check_address("pi5.lab", "B") == "pi5.lab"
    for bad in ("10.0.0.2; reboot", "-oProxyCommand=x", "", "a b"):
        with pytest.raises(BadInputError):
            check_address(bad, "B")


def test_a_board_listed_twice_is_one_board() -> None:
    local = TargetSpec(name="local", kind="local")
    assert same_target(local, TargetSpec(name="local", kind="local"))
    a = TargetSpec(name="pi@10.0.0.2", kind="ssh", host="10.0.0.2", user="pi")
    assert same_target(a, TargetSpec(name="pi@10.0.0.2:22", kind="ssh", host="10.0.0.2", user="pi"))
    assert not same_target(a, TargetSpec(name="pi@10.0.0.3", kind="ssh", host="10.0.0.3", user="pi"))


def test_validate_split_judges_every_node() -> None:
    from toolchain.core.nouns import NodeTelemetry, Telemetry
    from toolchain.deploy.group import validate_split

    p = group_plan(node("A", 1.9 * GiB, head=True), [node("B", 1.9 * GiB)])
    assert p.split is not None and p.selected is not None
    split, pred = p.split, p.selected.predicted
    tel = Telemetry(load_s=1, ttft_s=0.1, prefill_tokens_per_s=100, decode_tokens_per_s=pred.decode_tokens_per_s,
                    decode_ms_p50=1000 / pred.decode_tokens_per_s, decode_ms_p90=1100 / pred.decode_tokens_per_s, peak_rss_bytes=1 << 28,
                    llama_cpp="0.3.36", threads=2, ctx=4096, model_sha256="ab", gpu_layers_offloaded=split.n_gpu_layers)

    def nodes(worker_peak: int, rx: int = 1 << 20) -> list[NodeTelemetry]:
        return [NodeTelemetry(n.target, n.role, n.layer_count, peak_memory_bytes=worker_peak if n.role == "worker" else n.memory_bytes,
                              share_memory_bytes=n.memory_bytes, usable_memory_bytes=n.usable_memory_bytes,
                              link_rx_bytes=rx if n.role == "worker" else 0, link_tx_bytes=rx if n.role == "worker" else 0)
                for n in split.nodes]

    worker = next(n for n in split.nodes if n.role == "worker")
    ok = validate_split(tel, p, split, nodes(worker.memory_bytes), "ab")
    assert ok.passed, [c for c in ok.checks if not c.passed]
    names = {c.name for c in ok.checks}
    assert {"memory A", "memory B", "prediction memory B", "link B", "split placement", "decode budget"} <= names
    assert not {"placement", "fits memory"} & names  # the one-board checks that would misjudge a split
    over = validate_split(tel, p, split, nodes(worker.usable_memory_bytes + 1), "ab")
    assert not over.passed and [c.name for c in over.checks if not c.passed and c.severity == "error"] == ["memory B"]
    silent = validate_split(tel, p, split, nodes(worker.memory_bytes, rx=0), "ab")
    assert [c.name for c in silent.checks if not c.passed and c.severity == "error"] == ["link B"]
    cpu_only = validate_split(replace(tel, gpu_layers_offloaded=0), p, split, nodes(worker.memory_bytes), "ab")
    assert [c.name for c in cpu_only.checks if not c.passed and c.severity == "error"] == ["split placement"]
