import shutil
from pathlib import Path

import pytest

from toolchain.core.errors import BadInputError
from toolchain.models.gguf_reader import read_gguf


def test_reads_the_real_tensor_table(smollm2_gguf: Path) -> None:
    info = read_gguf(smollm2_gguf)
    assert info.architecture == "llama" and info.file_type == "Q4_1"
    assert info.arch["n_layer"] == 30 and info.arch["n_head_kv"] == 3 and info.arch["head_dim"] == 64
    assert info.tied_embeddings  # SmolLM2 has no output.weight
    assert info.weights_bytes < info.size_bytes < info.weights_bytes + 4 * 2**20


def _copy(src: Path, dst: Path, size: int | None = None) -> Path:
    if size is None:
        shutil.copy(src, dst)
    else:
        with src.open("rb") as f:
            dst.write_bytes(f.read(size))
    return dst


def test_wrong_magic(smollm2_gguf: Path, tmp_path: Path) -> None:
    bad = _copy(smollm2_gguf, tmp_path / "bad.gguf", 4096)
    bad.write_bytes(b"GGML" + bad.read_bytes()[4:])
    with pytest.raises(BadInputError, match=r"bad\.gguf: not a GGUF file"):
        read_gguf(bad)


def test_tensor_data_past_the_end(smollm2_gguf: Path, tmp_path: Path) -> None:
    cut = _copy(smollm2_gguf, tmp_path / "cut.gguf", 50_000_000)
    with pytest.raises(BadInputError, match=r"cut\.gguf: .*(past the end|truncated)"):
        read_gguf(cut)


def test_truncated_header(smollm2_gguf: Path, tmp_path: Path) -> None:
    cut = _copy(smollm2_gguf, tmp_path / "head.gguf", 1000)
    with pytest.raises(BadInputError, match=r"head\.gguf: .*(damaged|truncated)"):
        read_gguf(cut)
