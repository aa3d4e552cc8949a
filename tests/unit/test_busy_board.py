"""A measurement on a busy board says so: the runner meters other work, the verdict does not fail
the budget or the prediction on it, the lab draws it as a miss, not a pass."""

from __future__ import annotations

import time
from dataclasses import replace

from toolchain.core.nouns import Budget, Prediction, Selected, Telemetry
from toolchain.device import runner
from toolchain.verdict.validate import missed_on_noise, validate

SHA = "ab" * 32


def tel(**over: object) -> Telemetry:
    base = Telemetry(load_s=1.0, ttft_s=0.1, prefill_tokens_per_s=100.0, decode_tokens_per_s=4.0, decode_ms_p50=100.0,
                     decode_ms_p90=544.0, peak_rss_bytes=300 << 20, llama_cpp="0.3.36", threads=4, ctx=2048, model_sha256=SHA,
                     bench_wall_s=10.0, other_cpu_s=0.1, steal_s=0.0)
    return replace(base, **over)  # type: ignore[arg-type]


def selected(tps: float = 10.0, lo: float = 8.0, hi: float = 12.0) -> Selected:
    p = Prediction(decode_tokens_per_s=tps, decode_ms_per_token=1000 / tps, prefill_tokens_per_s=100.0, peak_memory_bytes=320 << 20,
                   decode_tokens_per_s_low=lo, decode_tokens_per_s_high=hi)
    return Selected(model="m", quant="Q4_K_M", params=1, file_bytes=1, ctx=2048, kv_type="f16", threads=4, mode="resident",
                    predicted=p)


def test_busy_is_other_cpu_steal_or_throttling_now() -> None:
    assert tel().busy() is None
    assert "other processes used 60% of a core" in (tel(other_cpu_s=6.0).busy() or "")
    assert "hypervisor took 10%" in (tel(steal_s=1.0).busy() or "")
    assert tel(extra={"throttled_during": 0x50000}).busy() is None  # throttled since boot, not during the bench
    assert "throttled" in (tel(extra={"throttled_during": 0x4}).busy() or "")
    assert tel(bench_wall_s=0.0, other_cpu_s=None).busy() is None  # an older runner: unknown, not busy


def test_a_busy_board_fails_neither_budget_nor_prediction_but_says_why() -> None:
    """The runner's p50 10 ms, p90 544 ms, mean 252 ms case: judged on the median, and warned."""
    budget = Budget(decode_ms_per_token=120.0)
    quiet = validate(tel(decode_tokens_per_s=3.97, decode_ms_p50=100.0), selected(), budget, usable_memory_bytes=8 << 30,
                     shipped_sha256=SHA)
    assert not quiet.passed and not next(c for c in quiet.checks if c.name == "decode budget").passed
    busy_tel = tel(decode_tokens_per_s=3.97, decode_ms_p50=100.0, other_cpu_s=15.0)  # 1.5 cores of other work
    assert missed_on_noise(quiet, busy_tel) and not missed_on_noise(quiet, tel())
    busy = validate(busy_tel, selected(), budget, usable_memory_bytes=8 << 30, shipped_sha256=SHA)
    assert busy.passed
    by = {c.name: c for c in busy.checks}
    assert not by["decode budget"].passed and by["decode budget"].severity == "warning"
    assert "the board was busy during the measurement (other processes used 150% of a core)" in by["decode budget"].detail
    assert not by["quiet board"].passed and by["quiet board"].severity == "warning"
    # ... but a miss no load explains stays a failure: 252 ms against a 0.5 ms budget
    hopeless = validate(busy_tel, selected(), Budget(decode_ms_per_token=0.5), usable_memory_bytes=8 << 30, shipped_sha256=SHA)
    assert not hopeless.passed
    assert next(c for c in hopeless.checks if c.name == "decode budget").severity == "error"


def test_the_prediction_is_judged_on_the_median_against_its_interval() -> None:
    budget = Budget(decode_ms_per_token=1000.0)
    inside = validate(tel(decode_tokens_per_s=4.0, decode_ms_p50=100.0), selected(10.0, 8.0, 12.0), budget,
                      usable_memory_bytes=8 << 30, shipped_sha256=SHA)
    assert next(c for c in inside.checks if c.name == "prediction decode").passed  # 10 tok/s median, in 8-12
    outside = validate(tel(decode_ms_p50=70.0), selected(10.0, 8.0, 12.0), budget, usable_memory_bytes=8 << 30, shipped_sha256=SHA,
                       strict_prediction=True)
    c = next(c for c in outside.checks if c.name == "prediction decode")
    assert not c.passed and "outside the predicted interval" in c.detail and not outside.passed


def test_the_lab_draws_a_missed_warning_as_a_miss() -> None:
    from toolchain.core.nouns import Check
    from toolchain.fleet.checks import _from_verdict, _prediction

    warn = Check("prediction decode", False, 3.4, "10.0-12.0", "outside the predicted interval", "warning")
    assert _prediction({"prediction decode": warn}).outcome == "warning"
    assert _from_verdict({"decode budget": replace(warn, name="decode budget")}, "decode budget", "meets the decode budget").outcome == "warning"


def test_the_runner_meters_other_work_while_it_decodes() -> None:
    meter = runner.BusyMeter()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass  # this process's own work: not "other"
    r = meter.result()
    wall, other = r["bench_wall_s"], r["other_cpu_s"]
    assert wall is not None and wall >= 0.3
    assert other is not None and other < wall  # our own busy loop is not counted as other work
    assert runner.cool_down() >= 0.0


