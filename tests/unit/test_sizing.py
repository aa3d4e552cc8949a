"""The memory and speed model against sizing.md's worked examples, llama.cpp's own allocator
(recorded dry loads) and the tensor table of the real SmolLM2 file."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.models.catalog import Arch, load_catalog
from toolchain.models.gguf_reader import read_gguf
from toolchain.plan import sizing

MiB, KiB = 1 << 20, 1 << 10


def llama31_8b() -> Arch:
    return load_catalog()["llama-3.1-8b-instruct"].arch


def test_kv_llama_3_1_8b_matches_sizing_md() -> None:
    a = llama31_8b()
    assert sizing.kv_cache_bytes(a, 1, "f16") // sizing.KV_PAD == 128 * KiB  # 128 KiB per token
    assert sizing.kv_cache_bytes(a, 4096, "f16") == 512 * MiB
    assert sizing.kv_cache_bytes(a, 4096, "q8_0") == 272 * MiB  # 68 KiB/token: q8_0 is 34 bytes per 32
    assert sizing.kv_cache_bytes(a, 4096, "q4_0") == 144 * MiB  # 36 KiB/token


def test_kv_gemma_3_4b_iswa_at_32k() -> None:
    a = load_catalog()["gemma-3-4b-it"].arch
    assert sum(not s for s in sizing.swa_layers(a)) == 5  # layers 5, 11, 17, 23, 29 are global
    kv = sizing.kv_cache_bytes(a, 32768, "f16")
    assert kv == 640 * MiB + 29 * 1536 * 4 * KiB  # sizing.md: ~814 MiB
    assert round(kv / MiB) == 814
    assert sizing.kv_cache_bytes(a, 32768, "f16", swa_full=True) == 4352 * MiB  # the naive formula, 5.3x


def test_kv_cells_pad_and_window() -> None:
    a = load_catalog()["gemma-3-270m-it"].arch  # window 512
    cells = sizing.kv_cells(a, 1000)
    assert max(cells) == 1024 and min(cells) == 1024  # PAD256(1000) and PAD256(512 + 512)
    assert min(sizing.kv_cells(a, 32768)) == 1024 and max(sizing.kv_cells(a, 32768)) == 32768
    # recorded dry load (llama-cpp-python 0.3.36): Gemma-3-270M q8_0 KV with FA at ctx 4096 = 14.35 MiB
    assert abs(sizing.kv_cache_bytes(a, 4096, "q8_0") - 15047064) < 0.01 * MiB


def test_kv_read_per_token_grows_with_depth_and_stops_at_the_window() -> None:
    a = load_catalog()["gemma-3-270m-it"].arch
    assert sizing.kv_read_bytes(a, 100, "f16") < sizing.kv_read_bytes(a, 400, "f16")
    swa_part = sizing.kv_read_bytes(a, 4000, "f16") - sizing.kv_read_bytes(a, 2000, "f16")
    assert swa_part == 3 * 2000 * 256 * 2 * 2  # only the 3 global layers keep growing


# Compute buffers recorded from llama.cpp's own reserve (dryload.SCRIPT, n_outputs_max 1,
# llama-cpp-python 0.3.36, x86-64): (model, ctx, flash_attn, n_batch) -> compute + output bytes.
RECORDED_COMPUTE = [
    ("smollm2-135m-instruct", 1024, False, 512, 27_860_663),
    ("smollm2-135m-instruct", 4096, False, 512, 90_775_223),
    ("smollm2-135m-instruct", 8192, False, 512, 174_661_303),
    ("smollm2-135m-instruct", 4096, True, 512, 18_559_794),
    ("smollm2-135m-instruct", 4096, False, 32, 5_861_539),
    ("gemma-3-270m-it", 4096, False, 512, 55_322_869),
    ("gemma-3-270m-it", 8192, True, 512, 29_118_955),
]


@pytest.mark.parametrize(("model", "ctx", "fa", "nb", "recorded"), RECORDED_COMPUTE)
def test_compute_buffer_within_10_percent_of_the_allocator(model: str, ctx: int, fa: bool, nb: int, recorded: int) -> None:
    a = load_catalog()[model].arch
    predicted = sizing.compute_buffer_bytes(a, nb, ctx, fa)
    assert abs(predicted - recorded) / recorded < 0.10


def test_tensor_table_sums_match_the_real_smollm2_file(smollm2_gguf: Path) -> None:
    info = read_gguf(smollm2_gguf)
    entry = load_catalog()["smollm2-135m-instruct"]
    w = sizing.weights_from_gguf(info, entry.arch)
    assert w.total_bytes == sum(t.n_bytes for t in info.tensors) == 96_576_768
    assert info.output_bytes == 0 and w.per_token_bytes == w.total_bytes  # tied: the embedding is the output GEMV
    assert w.token_embd_bytes == 49152 * 576 // 32 * 34  # Q8_0 embedding
    assert w.header_bytes == info.size_bytes - w.total_bytes > 1_000_000  # vocabulary and metadata
    assert w.dominant_type == "Q4_1"
    est = sizing.weights_estimate(entry, "Q4_1")
    assert abs(est.total_bytes - w.total_bytes) / w.total_bytes < 0.02  # the recipe estimate of the same file


def test_repack_rule_by_isa() -> None:
    # Measured on this project's x86 VM (AVX-512): SmolLM2 Q4_K_M holds 7.6 MiB more anonymous
    # memory than Q4_1 (its Q4_K tensors, 7.59 MiB), the Q2_K file 42.7 MiB more (its Q4_0
    # fallback tensors, 42.7 MiB); Q8_0/Q6_K/Q4_1 files none.
    w = sizing.Weights(100, 100, 0, 0, False, "t", (("Q4_K", 7_962_624), ("Q5_0", 1000), ("Q6_K", 500), ("Q8_0", 300)))
    x86 = sizing.normalize_isa(["avx2", "avx512f", "fma"])
    assert sizing.repack_bytes(w, x86) == 7_962_624
    arm = sizing.normalize_isa(["asimd", "asimddp"])  # cpuinfo spelling of dotprod
    assert sizing.repack_bytes(w, arm) == 7_962_624 + 500 + 300
    assert sizing.repack_bytes(w, frozenset({"neon"})) == 0  # Cortex-A72: no dotprod, no repack
    assert sizing.repack_bytes(w, x86, backend="cuda") == 0


def test_memory_counts_kv_fully_and_the_graph_of_what_runs() -> None:
    a = load_catalog()["smollm2-135m-instruct"].arch
    w = sizing.Weights(96_576_768, 96_576_768, 30_081_024, 0, False, "t", (("Q4_1", 66_000_000),), 1_785_664)
    m = sizing.memory(w, a, 4096, "f16", isa=frozenset({"avx2"}))
    assert m.kv_bytes == 90 * MiB  # llama.cpp clears the KV buffer at init: all of it is resident
    assert m.peak_bytes - m.bench_bytes == m.compute_bytes - sizing.compute_buffer_bytes(a, 32, 256, False) - m.repack_bytes
    # measured VmHWM of the runner's settings on x86: 247.5 MiB
    assert abs(m.bench_bytes / MiB - 247.5) / 247.5 < 0.03


def test_decode_time_is_bytes_over_bandwidth_plus_overhead() -> None:
    basis = sizing.SpeedBasis(10e9, 0.8, 1e11, 0.002, quant_factors=(("Q4_K", 0.5),), per_layer_overhead_s=0.0001)
    assert sizing.decode_seconds(8e8, basis) == pytest.approx(0.1 + 0.002)
    assert sizing.decode_seconds(8e8, basis, family="Q4_K", n_layer=10) == pytest.approx(0.2 + 0.002 + 0.001)
    stream = sizing.SpeedBasis(10e9, 0.8, 1e11, 0.0, storage_read_bytes_per_s=1e9)
    assert sizing.decode_seconds(8e8, stream, streamed_bytes=1e9) == pytest.approx(0.1 + 1.0)


def test_type_sizes_agree_with_the_gguf_package() -> None:
    """sizing keeps its own copy (import-light planner): every type it lists must match gguf's."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for name, sizes in sizing.TYPE_SIZES.items():
        assert name in GGMLQuantizationType.__members__, name
        assert GGML_QUANT_SIZES[GGMLQuantizationType[name]] == sizes, name
