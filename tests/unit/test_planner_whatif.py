"""What-if planning (board database + overrides), calibration from stored measurements, bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from toolchain.core.errors import BadInputError
from toolchain.core.nouns import Budget
from toolchain.core.units import parse_rate, parse_size
from toolchain.models.catalog import _load_entry, check_quant, load_catalog, lookup
from toolchain.plan import calibration
from toolchain.plan.basis import DEFAULT_EFFICIENCY, PER_LAYER_S, Overrides, build_basis
from toolchain.plan.boards import load_boards, lookup_board
from toolchain.plan.select import Option, PlanOptions, make_plan

BOARDS = load_boards()


def basis(board: str | None, **ov: object):  # type: ignore[no-untyped-def]
    return build_basis(None, lookup_board(BOARDS, board) if board else None, Overrides(**ov), records=[])  # type: ignore[arg-type]


def test_board_database_gives_the_basis() -> None:
    b, speed, threads = basis("rpi5-8gb")
    assert b.usable_memory_bytes == int(8 * 2**30 * 0.8)
    assert b.bandwidth_bytes_per_s == 11.59e9 and "measured read" in b.bandwidth_source
    assert b.efficiency == DEFAULT_EFFICIENCY[("sbc-cpu", "cpu")][0] and threads == 4
    assert "dotprod" in speed.isa and b.device_class == "sbc-cpu" and b.backend == "cpu"


def test_overrides_replace_the_board() -> None:
    b, speed, threads = basis("rpi5-8gb", ram_bytes=parse_size("4GB"), bandwidth_bytes_per_s=parse_rate("5GB/s"),
                              bandwidth_share=0.5, efficiency=0.6, threads=2, storage_read_bytes_per_s=parse_rate("900MB/s"))
    assert b.usable_memory_bytes == int(4e9 * 0.9)
    assert b.bandwidth_bytes_per_s == 2.5e9 and "--bandwidth x share 0.5" == b.bandwidth_source
    assert b.efficiency == 0.6 and b.efficiency_source == "--efficiency" and threads == 2
    assert speed.storage_read_bytes_per_s == 900e6
    b2, _, _ = basis(None, ram_bytes=parse_size("8GiB"), bandwidth_bytes_per_s=parse_rate("17GB/s"))
    assert b2.usable_memory_bytes == int(8 * 2**30 * 0.9) and b2.device_class == "x86-cpu"


def test_backend_changes_efficiency_and_bandwidth() -> None:
    cpu, _, _ = basis("jetson-orin-nano-8gb")
    cuda, cuda_speed, _ = basis("jetson-orin-nano-8gb", backend="cuda")
    assert cuda.bandwidth_bytes_per_s == pytest.approx(102.4e9 * 0.7) and "cuda GPU" in cuda.bandwidth_source
    # the CPU cores cannot pull what the GPU does
    assert cpu.bandwidth_bytes_per_s * cpu.efficiency < cuda.bandwidth_bytes_per_s * cuda.efficiency
    assert cuda.efficiency == DEFAULT_EFFICIENCY[("jetson", "cuda")][0] != cpu.efficiency
    # kernel launches per layer: the GPU's fixed cost scales with depth too (plan/published.py fit)
    assert cuda_speed.backend == "cuda" and cuda_speed.per_layer_overhead_s == PER_LAYER_S[("jetson", "cuda")] > 0
    metal, _, _ = basis("apple-m2-max", backend="metal")
    assert metal.efficiency == DEFAULT_EFFICIENCY[("apple-silicon", "metal")][0]
    assert metal.bandwidth_bytes_per_s == pytest.approx(400e9 * 0.7)
    with pytest.raises(BadInputError, match="backend cuda is not usable on rpi5-8gb"):
        basis("rpi5-8gb", backend="cuda")
    with pytest.raises(BadInputError, match="unknown backend"):
        basis("rpi5-8gb", backend="tpu")


def test_backend_changes_the_plan() -> None:
    cat = load_catalog()
    options = [Option(cat["llama-3.1-8b-instruct"], "Q4_K_M", None, "pypi"), Option(cat["llama-3.2-3b-instruct"], "Q4_K_M", None, "pypi")]
    picks = {}
    for backend in ("cpu", "cuda"):
        b, speed, threads = basis("jetson-orin-nano-8gb", backend=backend)
        p = make_plan(options, b, speed, Budget(decode_ms_per_token=120), PlanOptions(threads=threads))
        assert p.selected is not None
        picks[backend] = p.selected
    assert (picks["cuda"].model, picks["cpu"].model) == ("llama-3.1-8b-instruct", "llama-3.2-3b-instruct")
    assert picks["cuda"].predicted.repack_bytes == 0  # GPU weights are not repacked for CPU kernels


def test_model_and_quant_restrict_candidates() -> None:
    from toolchain.plan.basis import build_options

    cat = load_catalog()
    opts = build_options(cat, {}, models=("llama-3.2-1b-instruct",), quants=("q8_0", "Q4_K_M"))
    assert {(o.entry.id, o.quant) for o in opts} == {("llama-3.2-1b-instruct", "Q8_0"), ("llama-3.2-1b-instruct", "Q4_K_M")}


def test_stored_measurements_refine_the_next_plan() -> None:
    b0, _, _ = basis(None, ram_bytes=8 * 10**9, bandwidth_bytes_per_s=10e9)
    # a device that decodes twice as slowly as the default predicts, with a 3 ms overhead
    eta = b0.efficiency
    at = datetime(2025, 6, 1, tzinfo=UTC)
    recs = [calibration.DeviceMeasurement("dev", at, "m", "Q8_0", measured_decode_s=2 * n / (10e9 * eta) + 0.003,
                                          bytes_per_token=n, bandwidth_bytes_per_s=10e9, measured_peak_bytes=1_100_000_000,
                                          predicted_peak_bytes=1_000_000_000)
            for n in (200_000_000, 500_000_000, 1_000_000_000, 2_000_000_000)]
    fit = calibration.fit_device(recs, eta, 0.0015)  # the ridge keeps it a little toward the default
    assert fit.eta_scale == pytest.approx(0.5, rel=0.06) and fit.overhead_s == pytest.approx(0.003, rel=0.3)
    assert fit.memory_offset_bytes == 100_000_000 and fit.records == 4
    many = calibration.fit_device(recs * 10, eta, 0.0015)  # more evidence, closer
    assert many.eta_scale == pytest.approx(0.5, rel=0.01) and many.overhead_s == pytest.approx(0.003, rel=0.05)
    b1, s1, _ = build_basis(None, None, Overrides(ram_bytes=8 * 10**9, bandwidth_bytes_per_s=10e9), records=recs)
    assert b1.efficiency == pytest.approx(eta * fit.eta_scale, rel=1e-3) and s1.per_token_overhead_s == fit.overhead_s
    assert s1.factor("Q8_0") * s1.efficiency == pytest.approx(eta / 2, rel=0.06)
    assert "fitted on 4 measurement(s)" in b1.efficiency_source and b1.memory_offset_bytes == 100_000_000
    # one measurement moves the prediction toward it, not all the way
    one = calibration.fit_device(recs[:1], eta, 0.0015)
    assert 0.5 < one.eta_scale < 1 and one.records == 1
    # a type the device never ran keeps its default
    assert "Q4_K" not in fit.family_factors


def test_unknown_model_quant_and_board_list_close_matches() -> None:
    with pytest.raises(BadInputError, match="close matches: llama-3-8b-instruct"):
        lookup(load_catalog(), "lama-3-8b-instruct")
    with pytest.raises(BadInputError, match=r"close matches: .*Q4_K_M"):
        check_quant("Q4_K_N")
    with pytest.raises(BadInputError, match="unknown board 'rpi9'"):
        lookup_board(BOARDS, "rpi9")


@pytest.mark.parametrize("text", ["8", "8 apples", "GB"])
def test_sizes_and_rates_need_units(text: str) -> None:
    with pytest.raises(BadInputError, match="no recognised unit"):
        parse_size(text, "--ram")
    with pytest.raises(BadInputError, match="no recognised unit"):
        parse_rate(text, "--bandwidth")


def test_catalog_file_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    src = Path(load_catalog()["smollm2-135m-instruct"].source_file).read_text()
    missing = tmp_path / "smollm2-135m-instruct.yaml"
    missing.write_text(src.replace("  n_layer: 30\n", ""))
    with pytest.raises(BadInputError, match=r"smollm2-135m-instruct\.yaml.*n_layer"):
        _load_entry(missing)
    wrong = tmp_path / "smollm2-135m-instruct.yaml"
    wrong.write_text(src.replace("  head_dim: 64", "  head_dim: sixty-four"))
    with pytest.raises(BadInputError, match=r"smollm2-135m-instruct\.yaml.*head_dim"):
        _load_entry(wrong)


def test_a_spec_sheet_device_plans_from_its_class_and_peak_bandwidth() -> None:
    from toolchain.plan.basis import UNMEASURED_CLASS_INTERVAL

    b, speed, _ = build_basis(None, None, Overrides(ram_bytes=128 << 30, peak_bandwidth_bytes_per_s=273e9, device_class="unified-gpu",
                                                    backend="cuda"), records=[])
    assert b.bandwidth_bytes_per_s == pytest.approx(273e9 * 0.7) and "--peak-bandwidth" in b.bandwidth_source
    assert b.device_class == "unified-gpu" and b.efficiency == DEFAULT_EFFICIENCY[("unified-gpu", "cuda")][0]
    assert speed.interval == UNMEASURED_CLASS_INTERVAL and b.confidence == "class defaults"
    with pytest.raises(BadInputError, match="unknown device class 'gpu'"):
        build_basis(None, None, Overrides(ram_bytes=8 << 30, bandwidth_bytes_per_s=1e10, device_class="gpu"), records=[])


def test_a_quick_probe_plans_from_the_devices_stored_measurements() -> None:
    from dataclasses import replace

    from tests.unit.test_gpu_placement import x86_facts

    quick = replace(x86_facts(), bandwidth=replace(x86_facts().bandwidth, read_bytes_per_s=None), quick=True)
    with pytest.raises(BadInputError, match="no measured bandwidth for this target") as e:
        build_basis(quick, None, Overrides(), records=[])
    assert "ship once" in e.value.hint and "board:" in e.value.hint
    at = datetime(2025, 6, 1, tzinfo=UTC)
    recs = [calibration.DeviceMeasurement("dev", at, "m", "Q8_0", measured_decode_s=0.01, bytes_per_token=100_000_000,
                                          bandwidth_bytes_per_s=bw) for bw in (18e9, 20e9, 22e9)]
    b, _, _ = build_basis(quick, None, Overrides(), records=recs)
    assert b.bandwidth_bytes_per_s == pytest.approx(20e9) and "measurement" in b.bandwidth_source
