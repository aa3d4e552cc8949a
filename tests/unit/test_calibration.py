"""First-contact calibration: the device-side model writer, the results parser, and the fit of
fixed per-token and per-layer costs (the on-device run itself: tests/e2e/test_calibration.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from toolchain.device import calibrate as device
from toolchain.models.gguf_reader import read_gguf
from toolchain.plan.calibration import fit_device
from toolchain.probe.calibrate import parse_results
from toolchain.store.records import DeviceMeasurement

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_device_writer_makes_a_gguf_whose_bytes_are_what_it_reports(tmp_path: Path) -> None:
    shape = device.Shape(3, **device.TINY)
    path = tmp_path / "tiny.gguf"
    device.write_gguf(str(path), shape)
    info = read_gguf(path)
    assert info.architecture == "llama" and info.arch["n_layer"] == 3
    by: dict[str, int] = {}
    for t in info.tensors:
        by[t.type_name] = by.get(t.type_name, 0) + t.n_bytes
    assert by == shape.bytes_by_type("F16")


def test_calibration_models_are_sized_to_the_cache_and_to_free_memory() -> None:
    per_layer_q4 = sum(device.Shape(1, **device.BIG).bytes_by_type("Q4_0").values())
    assert device.big_layers(32 << 20, 64 << 30) * per_layer_q4 >= 4 * (32 << 20)  # 4 x the last-level cache
    assert device.big_layers(2 << 20, 64 << 30) * per_layer_q4 >= device.MIN_WEIGHTS  # a Pi 5: 2 MB L3
    small = device.big_layers(32 << 20, 300 << 20)  # a board with 300 MB free
    assert small * sum(device.Shape(1, **device.BIG).bytes_by_type("F16").values()) <= 100 << 20


def _result(**over: object) -> str:
    doc = {"model": "calibration-Q4_K", "family": "Q4_K", "n_layer": 21, "bytes_per_token": 1000, "bytes_by_type": {"Q4_K": 1000},
           "rows_per_token": 5000, "decode_s": 0.01, "decode_s_p90": 0.012, "threads": 2, "ctx": 256}
    doc.update(over)
    return json.dumps(doc)


@pytest.mark.parametrize("line", [
    _result(decode_s=0), _result(decode_s=-1.0), _result(decode_s="fast"), _result(family="Q4_K; rm -rf ~"),
    _result(n_layer=10**9), _result(bytes_by_type={"Q4_K": "x"}), _result(bytes_by_type=[1]), "[1, 2]", "{" * 50_000, "not json",
])
def test_results_from_the_device_are_checked(line: str) -> None:
    good = _result()
    results, wall, load = parse_results("\n".join([good, line, json.dumps({"done": True, "wall_s": 12.5, "load_after": 3.5})]))
    assert [r["model"] for r in results] == ["calibration-Q4_K"] and wall == 12.5 and load == 3.5


def test_the_fit_separates_per_token_and_per_layer_costs() -> None:
    """Records made by the model itself (bytes at 10 GB/s x eta, 0.1 ms + 20 us per layer) are
    recovered from a calibration-like set: big models in two types, two tiny ones of 2 and 24 layers."""
    bw, eta = 10e9, {"Q4_K": 0.9, "F16": 1.2}
    over, per_layer = 1e-4, 2e-5

    def rec(model: str, t: str, n_bytes: int, layers: int) -> DeviceMeasurement:
        y = n_bytes / (bw * eta[t]) + over + per_layer * layers
        return DeviceMeasurement(fingerprint="d", measured_at=T0, model=model, quant=t, measured_decode_s=y, bytes_per_token=n_bytes,
                                 bandwidth_bytes_per_s=bw, family=t, bytes_by_type={t: n_bytes}, n_layer=layers, origin="calibration")

    records = [rec("big-q4k", "Q4_K", 130 << 20, 21), rec("big-f16", "F16", 470 << 20, 21),
               rec("tiny-2", "F16", 800_000, 2), rec("tiny-24", "F16", 8_000_000, 24)]
    fit = fit_device(records, 0.85, 0.0015, {}, ridge=1e-6, per_layer_s=3e-5)
    assert fit.per_layer_overhead_s == pytest.approx(per_layer, rel=0.1)
    assert fit.overhead_s == pytest.approx(over, rel=0.25)
    assert fit.family_factors["Q4_K"] * 0.85 == pytest.approx(0.9, rel=0.02)
    assert fit.calibrated == 4 and fit.bandwidth_bytes_per_s == bw
    assert fit.spread[0] == pytest.approx(1.0, abs=0.02) and fit.spread[1] == pytest.approx(1.0, abs=0.02)
    assert "first-contact calibration" in fit.source


def test_old_records_without_layer_counts_keep_the_default_per_layer_cost() -> None:
    r = DeviceMeasurement(fingerprint="d", measured_at=T0, model="m", quant="Q4_K_M", measured_decode_s=0.02, bytes_per_token=10 << 20,
                          bandwidth_bytes_per_s=1e9, family="Q4_K")
    fit = fit_device([r], 0.85, 0.0015, {}, per_layer_s=3e-5)
    assert fit.per_layer_overhead_s is None and fit.records == 1 and fit.calibrated == 0
