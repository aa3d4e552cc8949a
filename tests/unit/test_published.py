"""toolchain/plan/published.py: class rules, the reading rules, a fit that recovers the parameters
of rows the model itself generated, leave-one-device-out, and intervals from residuals. On a small
CSV written here (CI may not have ../shared/reference/published-benchmarks.csv)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from toolchain.plan import published as P

COLUMNS = ["device", "ram_gb", "soc", "mem_bw_gbs_measured", "mem_bw_gbs_peak", "model", "params_b", "quant", "file_gb",
           "threads", "backend", "pp_tps", "tg_tps", "source"]


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    return path


@pytest.mark.parametrize(("device", "soc", "backend", "expected"), [
    ("Raspberry Pi 4", "BCM2711 (4xA72 1.5-1.8GHz, LPDDR4-3200 x32)", "llama.cpp CPU (llama-bench)", ("sbc-cpu", "cpu")),
    ("Raspberry Pi 400", "BCM2711 (4xA72)", "ollama CPU", ("sbc-cpu", "cpu")),
    ("Orange Pi 5", "RK3588", "llama.cpp CPU", ("sbc-cpu", "cpu")),
    ("Jetson AGX Orin 64GB", "AGX Orin (12xA78AE, LPDDR5 x256)", "llama.cpp CUDA", ("jetson", "cuda")),
    ("Jetson AGX Thor T5000", "Thor (LPDDR5X x256)", "llama.cpp CUDA build 3cfa9c3f1 (6840)", ("jetson", "cuda")),
    ("Apple M2 Max (38-core GPU)", "Apple M2 Max", "llama.cpp Metal", ("apple-silicon", "metal")),
    ("Apple M1", "Apple M1", "llama.cpp CPU", ("apple-silicon", "cpu")),
    ("Desktop", "AMD Ryzen 9 7950X + RTX 4090", "llama.cpp CUDA", ("discrete-gpu", "cuda")),
    ("GeForce RTX 3090", "", "llama.cpp Vulkan", ("discrete-gpu", "vulkan")),
    ("NVIDIA DGX Spark", "GB10", "llama.cpp CUDA", ("unified-gpu", "cuda")),
    ("Framework Desktop", "AMD Ryzen AI Max+ 395", "llama.cpp Vulkan", ("unified-gpu", "vulkan")),
    ("Pixel 8", "Google Tensor G3", "llama.cpp CPU", ("phone-cpu", "cpu")),
    ("Galaxy S24", "Snapdragon 8 Gen 3", "llama.cpp CPU", ("phone-cpu", "cpu")),
    ("Intel NUC 12", "Core i7-1260P", "llama.cpp CPU", ("x86-cpu", "cpu")),
])
def test_class_detection(device: str, soc: str, backend: str, expected: tuple[str, str]) -> None:
    b = P.backend_class(backend)
    assert b == expected[1]
    assert P.device_class(device, soc, b) == expected[0]


@pytest.mark.parametrize("backend", ["distributed-llama (not llama.cpp)", "llamafile-0.7 CPU", "llama.cpp HIP", "MLC LLM"])
def test_other_engines_and_backends_are_not_used(backend: str) -> None:
    assert P.backend_class(backend) is None


def test_unnamed_cpu_has_no_class_and_variants_are_one_device() -> None:
    assert P.device_class("Mystery box", "", "cpu") is None
    assert P.device_class("Mystery GPU box", "", "cuda") == "discrete-gpu"
    assert P.device_key("Apple M1 (7-core GPU)", "Apple M1") == P.device_key("Apple M1 (8-core GPU)", "Apple M1") == "Apple M1"
    assert P.device_key("Raspberry Pi 400", "BCM2711 (4xA72)") == P.device_key("Raspberry Pi 4", "BCM2711 (4xA72, x32)")
    assert P.device_key("Box (rev 2)", "") == "Box"


def test_reading_rules(tmp_path: Path) -> None:
    base = {"device": "Raspberry Pi 4", "soc": "BCM2711 (4xA72)", "mem_bw_gbs_peak": 12.8, "model": "Llama-3.2-1B",
            "params_b": 1.236, "quant": "Q4_K_M", "file_gb": 0.8, "backend": "llama.cpp CPU (llama-bench)", "tg_tps": 4.47}
    rows = [
        {**base, "mem_bw_gbs_measured": 4.37},
        {**base, "device": "Raspberry Pi 400", "model": "SomeNet-3B", "params_b": 3.0},  # measured from the same chip
        {**base, "device": "Odroid N2", "soc": "S922X (A73)", "mem_bw_gbs_peak": 10.0},  # 0.7 x peak
        {**base, "model": "Mixtral (MoE)"},
        {**base, "backend": "llama.cpp Metal (-ngl 20, partial offload)"},
        {**base, "backend": "llama.cpp CPU, swapping"},
        {**base, "model": "gemma-4-E2B-it (PLE)"},
        {**base, "file_gb": ""},
        {**base, "backend": "llamafile-0.7 CPU"},
    ]
    recs, skipped = P.records_from_rows(P.read_csv(write_csv(tmp_path / "b.csv", rows)), [("llama-3.2-1b-instruct", 1.236, 16)])
    assert [i for i, _ in skipped] == [3, 4, 5, 6, 7, 8]
    a, b, c = recs
    assert (a.bandwidth_bytes_per_s, a.bandwidth_source) == (4.37e9, "measured")
    assert (b.device, b.bandwidth_bytes_per_s, b.bandwidth_source) == (a.device, 4.37e9, "measured (same device)")
    assert c.bandwidth_bytes_per_s == pytest.approx(7.0e9) and c.bandwidth_source == "0.7 x peak"
    assert a.bytes_per_token == 0.8e9 and a.family == "Q4_K" and a.group == ("sbc-cpu", "cpu")
    assert (a.n_layer, a.n_layer_source) == (16, "catalog llama-3.2-1b-instruct")  # by name
    assert b.n_layer == round(25.9 * 3.0**0.159) and b.n_layer_source.startswith("power law")


def test_layer_estimate_nearest_params() -> None:
    table = [("llama-3-70b-instruct", 70.55, 80), ("qwen3-0.6b", 0.596, 28)]
    assert P.estimate_layers("Llama-2-70B", 69.0, table) == (80, "catalog, nearest params: llama-3-70b-instruct")
    n, src = P.estimate_layers("Unknown-7B", 7.0, table)
    assert src.startswith("power law") and 30 <= n <= 40


# --- synthetic rows from the model itself ----------------------------------------------------------

TRUE_ETA = {"Q4_0": 0.80, "Q8_0": 0.88, "IQ3_S": 0.64}
TRUE_A, TRUE_B = 0.002, 0.00005
MODELS = [(0.3e9, 18), (0.7e9, 24), (1.5e9, 28), (4.0e9, 32), (0.5e9, 40)]


def synthetic(device: str, bw: float, cls: str = "sbc-cpu", eta: dict[str, float] | None = None) -> list[P.Record]:
    eta = eta or TRUE_ETA
    out = []
    for i, (size, n_layer) in enumerate(MODELS):
        for fam, e in eta.items():
            s = size / (bw * e) + TRUE_A + TRUE_B * n_layer
            out.append(P.Record(device=device, name=device, device_class=cls, backend="cpu", bandwidth_bytes_per_s=bw,
                                bandwidth_source="measured", peak_bandwidth_bytes_per_s=None, bytes_per_token=size,
                                params_b=size / 1e9, n_layer=n_layer, n_layer_source="csv", model=f"m{i}", quant=fam,
                                family=fam, tg_tps=1.0 / s))
    return out


def test_fit_recovers_known_parameters() -> None:
    recs = synthetic("A", 5e9) + synthetic("B", 10e9) + synthetic("C", 20e9)
    fit = P.fit_class(recs, ridge=1e-6)
    for fam, e in TRUE_ETA.items():
        assert fit.efficiency * fit.family_factors[fam] == pytest.approx(e, rel=0.03)
    assert fit.overhead_s == pytest.approx(TRUE_A, abs=0.0003)
    assert fit.per_layer_s == pytest.approx(TRUE_B, abs=0.00001)
    errs = [abs(fit.tps(r) - r.tg_tps) / r.tg_tps for r in recs]
    assert max(errs) < 0.03
    assert fit.devices == ("A", "B", "C") and fit.rows == len(recs)


def test_fit_without_data_for_a_family_keeps_factor_one() -> None:
    fit = P.fit_class(synthetic("A", 5e9) + synthetic("B", 10e9), ridge=1e-6)
    r = synthetic("C", 20e9, eta={"Q6_K": 0.8})[0]
    assert fit.family_factors.get("Q6_K", 1.0) == 1.0
    assert fit.decode_s(r) == pytest.approx(r.bytes_per_token / (r.bandwidth_bytes_per_s * fit.efficiency)
                                            + fit.overhead_s + fit.per_layer_s * r.n_layer)


def test_lodo_excludes_the_held_out_device() -> None:
    odd = {k: v * 0.5 for k, v in TRUE_ETA.items()}  # device D is twice as slow: it must not pull its own fit
    recs = synthetic("A", 5e9) + synthetic("B", 10e9) + synthetic("C", 20e9) + synthetic("D", 8e9, eta=odd)
    recs += synthetic("J", 100e9, cls="jetson")  # alone in its class: predicted from the priors
    result = P.lodo(recs)
    assert len(result.held) == len(recs)
    for d, fits in result.fits.items():
        assert all(d not in f.devices for f in fits.values())
    without_d = P.fit_all([r for r in recs if r.device != "D"])[("sbc-cpu", "cpu")]
    for h in result.held:
        if h.record.device == "D":
            assert h.fit.devices == ("A", "B", "C")
            assert h.predicted_tps == pytest.approx(without_d.tps(h.record))
            assert h.predicted_tps > 1.5 * h.record.tg_tps  # it was not fitted on D: twice too fast
        if h.record.device == "A":
            assert h.rel_error < 0.2  # B and C outvote D: A stays near (D pulls a third)
    j = [h for h in result.held if h.record.device == "J"]
    assert all(h.fit.spread_source.startswith("prior") and h.fit.devices == () for h in j)
    assert all(h.low_tps < h.predicted_tps < h.high_tps for h in result.held)


# --- intervals ---------------------------------------------------------------------------------


def test_spread_from_residuals() -> None:
    ratios = [0.8, 0.9, 0.95, 1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.25]
    res = [(f"d{i}", math.log(x)) for i, x in enumerate(ratios)]
    widened, raw = P.spread_of(res, n_devices=10)
    assert raw[0] == pytest.approx(0.82, abs=0.03) and raw[1] == pytest.approx(1.22, abs=0.03)
    assert widened[0] < raw[0] and widened[1] > raw[1]
    few, _ = P.spread_of(res, n_devices=1)
    few_models, _ = P.spread_of(res, n_devices=10, n_models=1)
    assert few[0] < widened[0] and few[1] > widened[1] and few_models[1] > widened[1]
    tight, _ = P.spread_of([("a", 0.0), ("b", 0.001)], n_devices=50)
    assert tight[0] <= math.exp(-P.SPREAD_FLOOR) + 1e-3 and tight[1] >= math.exp(P.SPREAD_FLOOR) - 1e-3
    # each device weighs 1: a device with many rows does not own the percentiles
    heavy = [("big", 0.0)] * 100 + [(f"d{i}", math.log(x)) for i, x in enumerate(ratios)]
    _, raw_heavy = P.spread_of(heavy, n_devices=11)
    assert raw_heavy[0] < 0.9 and raw_heavy[1] > 1.1


def test_fit_all_interval_comes_from_residuals() -> None:
    recs = []
    for i, scale in enumerate((0.8, 0.9, 1.0, 1.1, 1.25)):  # five devices, each off the class by its own factor
        recs += synthetic(f"D{i}", 10e9, eta={k: v * scale for k, v in TRUE_ETA.items()})
    fits = P.fit_all(recs)
    fit = fits[("sbc-cpu", "cpu")]
    assert fit.spread_source == "device-out residuals of 5 devices"
    assert fit.raw_spread[0] < 0.92 and fit.raw_spread[1] > 1.08
    assert fit.spread[0] < fit.raw_spread[0] and fit.spread[1] > fit.raw_spread[1]
    r = recs[0]
    lo, hi = fit.interval(r)
    assert lo == pytest.approx(fit.tps(r) * fit.spread[0]) and hi == pytest.approx(fit.tps(r) * fit.spread[1])


def test_bench_runs_on_a_small_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "bench" / "published_lodo.py"
    spec = importlib.util.spec_from_file_location("bench_published_lodo_test", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    rows: list[dict[str, object]] = []
    for dev, bw in (("Apple M1", 68), ("Apple M1 Pro", 200), ("Apple M2 Max", 400)):
        for quant, size, tg in (("Q4_0", 3.823, bw * 0.9 / 3.823 * 0.85), ("Q8_0", 7.162, bw * 0.9 / 7.162 * 0.9)):
            rows.append({"device": dev, "soc": dev, "mem_bw_gbs_peak": bw, "model": "Llama-2-7B", "params_b": 6.74,
                         "quant": quant, "file_gb": size, "backend": "llama.cpp Metal", "tg_tps": round(tg, 2)})
    rc = mod.main(["--csv", str(write_csv(tmp_path / "m.csv", rows))])
    out = capsys.readouterr().out
    assert rc == 0 and "apple-silicon/metal" in out and "Goals" in out and "today, board basis" in out
