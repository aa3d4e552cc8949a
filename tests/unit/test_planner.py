"""Selection (pure): order, quality floor, quantized KV when needed, streaming only when it meets
the budget, reasons with numbers, nearest miss with what would make it fit."""

from __future__ import annotations

import re

import pytest

from toolchain.core.nouns import Basis, Budget, Plan
from toolchain.models.catalog import load_catalog
from toolchain.plan.select import Option, PlanOptions, make_plan
from toolchain.plan.sizing import SpeedBasis

GiB = 1 << 30
CAT = load_catalog()


def opts(*pairs: tuple[str, str], available: bool = True) -> list[Option]:
    return [Option(CAT[m], q, None, "pypi" if available else None) for m, q in pairs]


def plan(options: list[Option], *, usable: float = 8 * GiB, bw: float = 10e9, budget_ms: float = 1000.0,
         storage: float | None = None, **kw: object) -> Plan:
    basis = Basis(usable_memory_bytes=int(usable), bandwidth_bytes_per_s=bw, efficiency=0.85, storage_read_bytes_per_s=storage)
    speed = SpeedBasis(bw, 0.85, 1e11, 0.002, storage_read_bytes_per_s=storage)
    return make_plan(options, basis, speed, Budget(decode_ms_per_token=budget_ms), PlanOptions(threads=4, **kw))  # type: ignore[arg-type]


def test_largest_model_then_most_bits() -> None:
    p = plan(opts(("qwen2.5-0.5b-instruct", "Q8_0"), ("qwen2.5-3b-instruct", "Q4_K_M"), ("qwen2.5-3b-instruct", "Q8_0"),
                  ("qwen2.5-1.5b-instruct", "F16")))
    assert p.selected is not None
    assert (p.selected.model, p.selected.quant) == ("qwen2.5-3b-instruct", "Q8_0")
    assert p.selected.threads == 4 and p.selected.kv_type == "f16" and p.selected.mode == "resident"
    assert p.selected.ctx == 4096


def test_budget_then_memory_decide_among_sizes() -> None:
    many = opts(("llama-3.1-8b-instruct", "Q4_K_M"), ("llama-3.2-3b-instruct", "Q4_K_M"), ("llama-3.2-1b-instruct", "Q8_0"))
    slow = plan(many, bw=17e9, budget_ms=300)  # 8B Q4_K_M reads ~4.6 GB per token: ~330 ms at 14 GB/s
    assert slow.selected is not None and slow.selected.model == "llama-3.2-3b-instruct"
    small = plan(many, usable=1.5 * GiB)
    assert small.selected is not None and small.selected.model == "llama-3.2-1b-instruct"


def test_reasons_carry_numbers() -> None:
    p = plan(opts(("llama-3.1-8b-instruct", "Q4_K_M"), ("llama-3.2-1b-instruct", "Q4_K_M")), usable=4 * GiB, budget_ms=120, bw=17e9)
    big = next(c for c in p.candidates if c.model == "llama-3.1-8b-instruct")
    assert not big.fits
    assert any(re.fullmatch(r"needs [\d.]+ GiB with f16 KV at ctx 4096 \([\d.]+ GiB with q4_0 KV\), [\d.]+ GiB usable", r)
               for r in big.reasons), big.reasons
    slow = plan(opts(("llama-3.2-3b-instruct", "F16")), bw=4e9, budget_ms=120)
    c = slow.candidates[0]
    assert any(re.fullmatch(r"predicted [\d.]+ ms/token > 120 ms budget", r) for r in c.reasons), c.reasons
    assert any(re.fullmatch(r"a budget of \d+ms would fit", f) for f in c.fixes)


def test_quality_floor_and_its_exemptions() -> None:
    p = plan(opts(("llama-3.2-3b-instruct", "Q2_K"), ("llama-3.2-1b-instruct", "Q4_K_M")))
    low = next(c for c in p.candidates if c.quant == "Q2_K")
    assert not low.fits and any("quality floor" in r and re.search(r"\d\.\d\d bits per weight", r) for r in low.reasons)
    assert p.selected is not None and p.selected.model == "llama-3.2-1b-instruct"
    allowed = plan(opts(("llama-3.2-3b-instruct", "Q2_K")), allow_low_bit=True)
    assert allowed.selected is not None and allowed.selected.quant == "Q2_K"
    ternary = plan(opts(("bitnet-b1.58-2b-4t", "TQ1_0")))
    assert ternary.selected is not None  # natively ternary: no post-training loss to guard against


def test_quantized_kv_only_when_it_is_what_fits() -> None:
    o = opts(("llama-3.1-8b-instruct", "Q4_K_M"))
    roomy = plan(o, usable=16 * GiB, ctx=32768)
    assert roomy.selected is not None and roomy.selected.kv_type == "f16" and not roomy.selected.flash_attn
    peak = {kv: plan(o, usable=64 * GiB, ctx=32768, kv_types=(kv,)).selected.predicted.peak_memory_bytes  # type: ignore[union-attr]
            for kv in ("f16", "q8_0", "q4_0")}
    assert peak["f16"] > peak["q8_0"] > peak["q4_0"]
    tight = plan(o, usable=(peak["f16"] + peak["q8_0"]) / 2, ctx=32768)
    assert tight.selected is not None and tight.selected.kv_type == "q8_0" and tight.selected.flash_attn
    assert any("KV cache quantized to q8_0" in n and "does not fit" in n for n in tight.selected.notes)
    tighter = plan(o, usable=(peak["q8_0"] + peak["q4_0"]) / 2, ctx=32768)
    assert tighter.selected is not None and tighter.selected.kv_type == "q4_0"


def test_ctx_defaults_to_4096_or_the_trained_maximum() -> None:
    p = plan(opts(("phi-3-mini-4k-instruct", "Q4_K_M"), ("llama-3.2-1b-instruct", "Q4_K_M")), ctx=8192)
    ctx = {c.model: c.ctx for c in p.candidates}
    assert ctx["llama-3.2-1b-instruct"] == 8192 and ctx["phi-3-mini-4k-instruct"] == 4096
    assert plan(opts(("llama-3.2-1b-instruct", "Q4_K_M"))).candidates[0].ctx == 4096


def test_stream_mode_only_when_it_meets_the_budget() -> None:
    o = opts(("llama-3.1-8b-instruct", "Q4_K_M"))
    # 4 GiB usable: the ~4.6 GB of weights do not fit; fast NVMe-class storage streams the rest
    fast = plan(o, usable=4 * GiB, bw=17e9, storage=3e9, budget_ms=2000)
    assert fast.selected is not None and fast.selected.mode == "stream"
    sel = fast.selected
    assert sel.predicted.streamed_bytes_per_token > 0 and sel.predicted.peak_memory_bytes <= 4 * GiB
    assert any(n.startswith("STREAMING FROM STORAGE") and "not a resident plan" in n for n in sel.notes)
    assert fast.candidates[0].mode == "stream"
    # the same at a human reading budget: rejected, with the streaming latency as the reason
    tight = plan(o, usable=4 * GiB, bw=17e9, storage=3e9, budget_ms=120)
    assert tight.selected is None
    assert any("streaming from storage" in r and "ms budget" in r for r in tight.candidates[0].reasons)
    # no storage figure: never streamed
    none = plan(o, usable=4 * GiB, bw=17e9, budget_ms=2000)
    assert none.selected is None and "GiB usable" in " ".join(none.candidates[0].reasons)
    # resident beats stream when both fit
    assert plan(o, usable=8 * GiB, storage=3e9, budget_ms=2000).selected.mode == "resident"  # type: ignore[union-attr]
    assert plan(o, usable=4 * GiB, storage=3e9, budget_ms=2000, mode="resident").selected is None


def test_nothing_fits_names_the_nearest_miss_and_the_fix() -> None:
    ctx_fix = plan(opts(("llama-3.1-8b-instruct", "Q4_K_M")), usable=6 * GiB, ctx=131072)
    assert ctx_fix.selected is None and ctx_fix.nearest_miss
    assert "llama-3.1-8b-instruct Q4_K_M: needs" in ctx_fix.nearest_miss
    assert re.search(r"--ctx \d+ .*would fit", ctx_fix.nearest_miss), ctx_fix.nearest_miss
    budget_fix = plan(opts(("llama-3.2-3b-instruct", "Q8_0"), ("llama-3.1-8b-instruct", "Q8_0")), bw=4e9, budget_ms=100)
    assert budget_fix.selected is None and budget_fix.nearest_miss
    assert budget_fix.nearest_miss.startswith("llama-3.2-3b-instruct Q8_0: predicted")  # the closer of the two
    assert re.search(r"a budget of \d+ms would fit", budget_fix.nearest_miss)
    ram_fix = plan(opts(("llama-3-70b-instruct", "Q4_K_M")), usable=2 * GiB)
    assert ram_fix.nearest_miss and re.search(r"[\d.]+ GiB more usable memory would fit", ram_fix.nearest_miss)


def test_offline_availability_is_a_reason() -> None:
    p = plan(opts(("llama-3.2-1b-instruct", "Q4_K_M"), available=False), require_available=True)
    assert p.selected is None and "not available offline" in p.candidates[0].reasons[0]
    assert not p.candidates[0].available


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q8_0"])
def test_prediction_carries_its_basis(quant: str) -> None:
    p = plan(opts(("qwen2.5-1.5b-instruct", quant)))
    pred = p.selected.predicted  # type: ignore[union-attr]
    assert pred.bytes_per_token > 0 and pred.efficiency > 0 and pred.per_token_overhead_s > 0
    assert pred.kernel_family in ("Q4_K", "Q5_0", "Q8_0", "Q6_K")
    assert pred.weights_bytes + pred.kv_bytes + pred.compute_bytes + pred.overhead_bytes <= pred.peak_memory_bytes
    assert pred.bench_rss_bytes < pred.peak_memory_bytes


def test_the_plan_table_shows_each_models_best_quant_else_its_nearest() -> None:
    from toolchain.cli.render_plan import per_model
    from toolchain.core.nouns import Candidate

    def cand(model: str, quant: str, size: int, fits: bool, mode: str = "resident") -> Candidate:
        return Candidate(model=model, quant=quant, fits=fits, reasons=[] if fits else ["too big"], predicted=None,
                         params=1, file_bytes=size, mode=mode)

    rows = per_model([cand("a", "Q8_0", 8, False), cand("a", "Q6_K", 6, True), cand("a", "Q4_K_M", 4, True),
                      cand("b", "Q8_0", 80, False), cand("b", "Q2_K", 20, False), cand("b", "Q4_K_M", 40, False)])
    assert [(c.model, c.quant) for c in rows] == [("a", "Q6_K"), ("b", "Q2_K")]
