"""Synthetic llama GGUFs (real shapes, random weights, minimal tokenizer) and the dry load that
sizes a plan with llama.cpp's allocator from a GGUF header alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from toolchain.core.nouns import Prediction, Selected
from toolchain.core.serde import to_json_dict
from toolchain.deploy import dry_load as dryload
from toolchain.models import synthetic
from toolchain.models.catalog import entry_from_gguf
from toolchain.models.gguf_reader import read_gguf
from toolchain.plan import sizing
from toolchain.transports.local import LocalTransport

TINY = synthetic.SyntheticSpec("synth-tiny", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=512,
                               context_length=256)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.write_f16(TINY, tmp_path_factory.mktemp("synth") / "F16.gguf")


def test_presets_have_the_shapes_they_claim() -> None:
    assert 0.45e9 < synthetic.PRESETS["synth-llama-0.5b"].params < 0.55e9
    assert 1.1e9 < synthetic.PRESETS["synth-llama-1b"].params < 1.3e9
    assert 3.0e9 < synthetic.PRESETS["synth-llama-3b"].params < 3.3e9


def test_written_file_reads_back_with_its_tensor_table(tiny: Path) -> None:
    info = read_gguf(tiny)
    assert info.architecture == "llama" and info.file_type == "F16"
    assert info.params == TINY.params
    norms = 2 * TINY.n_layer + 1
    assert info.weights_bytes == 2 * (TINY.params - norms * TINY.n_embd) + 4 * norms * TINY.n_embd
    assert info.tied_embeddings and info.arch["n_vocab"] == 512 and info.arch["head_dim"] == 16
    entry = entry_from_gguf(tiny)
    assert entry.arch.n_layer == 2 and entry.arch.n_head_kv == 2
    assert sizing.weights_from_gguf(info, entry.arch).per_token_bytes == info.weights_bytes  # tied


def test_vocabulary_is_minimal_and_valid() -> None:
    tokens, scores, types = synthetic._vocab(400)
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types) == 400
    assert tokens[:3] == [b"<unk>", b"<s>", b"</s>"] and tokens[3] == b"<0x00>" and types[3] == 6


def test_llama_cpp_loads_it_and_decodes(tiny: Path) -> None:
    import llama_cpp  # installed by scripts/setup.sh: a missing one fails, never skips

    llm = llama_cpp.Llama(model_path=str(tiny), n_ctx=64, n_threads=1, verbose=False)
    toks = llm.tokenize(b"hello world", add_bos=True)
    assert toks[0] == 1 and len(toks) > 2
    llm.eval(toks)
    assert llm.n_tokens == len(toks)


def test_dry_load_from_the_header_alone(tiny: Path, tmp_path: Path) -> None:
    sel = Selected(model="t", quant="F16", params=TINY.params, file_bytes=tiny.stat().st_size, ctx=256, kv_type="f16",
                   threads=1, mode="resident", predicted=Prediction(0, 0, 0, 0))
    header = tiny.read_bytes()[: dryload.header_bytes(tiny)]
    assert len(header) < tiny.stat().st_size  # the tensor data does not travel
    res = LocalTransport().run([sys.executable, "-c", dryload.SCRIPT, *dryload.script_args(sel, str(tmp_path), tiny.stat().st_size)],
                               stdin=header, check=False, timeout=120)
    dry = dryload.parse(res.stdout, res.stderr, res.exit_status)
    assert dry.ok, dry.error
    info = read_gguf(tiny)
    assert dry.model_bytes == info.weights_bytes  # llama_model_size is the tensor table
    entry = entry_from_gguf(tiny)
    # the log prints MiB with two decimals
    assert abs(dry.kv_bytes - sizing.kv_cache_bytes(entry.arch, 256, "f16")) <= 0.005 * 2**20 and dry.kv_cells == [256]
    assert dry.compute_bytes > 0 and not list(tmp_path.iterdir())  # the sparse stub is removed


# Recorded on x86-64 with llama-cpp-python 0.3.36: SmolLM2-135M Q4_1, ctx 4096, f16 KV, n_batch 512,
# n_outputs_max 1 (what toolchain/device/dry_load.py prints; log lines abridged to the ones it keeps).
RECORDED = (
    '{"ok": true, "log": ["print_info: file size   = 92.10 MiB (5.74 BPW)", '
    '"load_tensors:          CPU model buffer size =     0.00 MiB", '
    '"llama_context:        CPU  output buffer size =     0.19 MiB", '
    '"llama_kv_cache:        CPU KV buffer size =     0.00 MiB", '
    '"llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  1/1 seqs), K (f16):   45.00 MiB, V (f16):   45.00 MiB", '
    '"sched_reserve:        CPU compute buffer size =    86.38 MiB"], "llama_cpp": "0.3.36", '
    '"model_bytes": 96576768, "n_params": 134515008, "rss_bytes": 64278528}'
)


def test_parse_recorded_dry_load() -> None:
    dry = dryload.parse("noise\n" + RECORDED + "\n")
    assert dry.ok and dry.model_bytes == 96_576_768 and dry.kv_bytes == 90 * 2**20 and dry.kv_cells == [4096]
    assert dry.compute_bytes == int(86.38 * 2**20) and dry.output_bytes == int(0.19 * 2**20)
    assert dry.buffers["CPU compute"] == dry.compute_bytes and dry.rss_bytes == 64_278_528
    p = Prediction(100.0, 10.0, 100.0, 400_000_000, weights_bytes=96_576_768, kv_bytes=90 * 2**20, compute_bytes=90_000_000)
    rows = {r.component: r for r in dryload.compare(p, dry)}
    assert rows["weights"].error == 0 and rows["kv cache"].error == 0
    assert abs(rows["compute buffers"].error or 1.0) < 0.05


def test_dry_load_report_keeps_the_report_keys() -> None:
    """The report's "dry_load" entry: the same JSON keys whether or not the dry load ran."""
    p = Prediction(100.0, 10.0, 100.0, 400_000_000, weights_bytes=96_576_768, kv_bytes=90 * 2**20, compute_bytes=90_000_000)
    dry = dryload.parse(RECORDED)
    rep = dryload.report(p, dry, usable_bytes=300_000_000)
    doc = to_json_dict(rep)
    assert set(doc) == {"result", "fits", "comparison", "allocator_peak_bytes", "usable_bytes", "device_bytes", "device_budget_bytes"}
    assert doc["result"] == to_json_dict(dry) and doc["usable_bytes"] == 300_000_000
    assert [set(r) for r in doc["comparison"]] == [{"component", "predicted_bytes", "allocator_bytes", "error"}] * 3
    need = 400_000_000 - 96_576_768 - 90 * 2**20 - 90_000_000 + dry.model_bytes + dry.kv_bytes + dry.compute_bytes + dry.output_bytes
    assert doc["allocator_peak_bytes"] == need and doc["fits"] is (need <= 300_000_000)
    assert dryload.report(p, dry, usable_bytes=need).fits is True and dryload.report(p, dry, usable_bytes=need - 1).fits is False
    failed = to_json_dict(dryload.report(p, dryload.parse("", "boom\n", 1), usable_bytes=1))
    assert failed["fits"] is None and failed["comparison"] == [] and failed["allocator_peak_bytes"] is None
    assert "boom" in failed["result"]["error"]


def test_parse_failures_are_reported_not_raised() -> None:
    crashed = dryload.parse("", "llama-model.cpp:1855: GGML_ASSERT(!ml.no_alloc) failed\n", -6)
    assert not crashed.ok and "GGML_ASSERT" in (crashed.error or "")
    old = dryload.parse('{"ok": false, "error": "this llama-cpp-python has no no_alloc model parameter", "log": []}', "", 4)
    assert not old.ok and "no_alloc" in (old.error or "")
