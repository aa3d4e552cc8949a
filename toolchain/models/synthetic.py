"""Llama-architecture GGUFs with random weights and real shapes, for measuring the planner.

Speed and memory depend on shapes and tensor types, not on what the weights say, so a file
with the tensor table of a real 0.5B/1B/3B model measures like that model. Files are written
F16 (streamed tensor by tensor: a 3B model never sits in RAM) into the user cache, then
quantized with llama.cpp's own quantizer (requantize.requantize). Never in the repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.core.paths import cache_dir


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    context_length: int = 8192
    tied_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def params(self) -> int:
        hd = self.head_dim
        attn = self.n_embd * hd * (2 * self.n_head + 2 * self.n_head_kv)
        ffn = 3 * self.n_embd * self.n_ff
        layer = attn + ffn + 2 * self.n_embd
        embd = self.n_vocab * self.n_embd * (1 if self.tied_embeddings else 2)
        return self.n_layer * layer + embd + self.n_embd


# Shapes of public models (config.json of Qwen2.5-0.5B, Llama-3.2-1B, Llama-3.2-3B), written as
# plain llama architecture.
PRESETS: dict[str, SyntheticSpec] = {
    "synth-llama-0.5b": SyntheticSpec("synth-llama-0.5b", 24, 896, 14, 2, 4864, 151936),
    "synth-llama-1b": SyntheticSpec("synth-llama-1b", 16, 2048, 32, 8, 8192, 128256),
    "synth-llama-3b": SyntheticSpec("synth-llama-3b", 28, 3072, 24, 8, 8192, 128256),
}


def synthetic_path(name: str, quant: str) -> Path:
    return cache_dir() / "synthetic" / name / f"{quant}.gguf"


def _tensor_shapes(spec: SyntheticSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) in llama.cpp's order; numpy shapes are (rows, row length)."""
    e, hd = spec.n_embd, spec.head_dim
    yield "token_embd.weight", (spec.n_vocab, e)
    for il in range(spec.n_layer):
        p = f"blk.{il}."
        yield p + "attn_norm.weight", (e,)
        yield p + "attn_q.weight", (spec.n_head * hd, e)
        yield p + "attn_k.weight", (spec.n_head_kv * hd, e)
        yield p + "attn_v.weight", (spec.n_head_kv * hd, e)
        yield p + "attn_output.weight", (e, spec.n_head * hd)
        yield p + "ffn_norm.weight", (e,)
        yield p + "ffn_gate.weight", (spec.n_ff, e)
        yield p + "ffn_up.weight", (spec.n_ff, e)
        yield p + "ffn_down.weight", (e, spec.n_ff)
    yield "output_norm.weight", (e,)
    if not spec.tied_embeddings:
        yield "output.weight", (spec.n_vocab, e)


def _vocab(n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """A minimal valid SentencePiece ("llama") vocabulary: specials, 256 byte tokens, fillers."""
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" ", "."]
    i = 0
    while len(tokens) < n_vocab:
        # "\u2581" is SentencePiece's space marker; vary the pieces so every token is unique
        word, k = "", i
        while True:
            word += pieces[k % len(pieces)]
            k //= len(pieces)
            if k == 0:
                break
        tokens.append(("\u2581" + word).encode())
        types.append(1)
        i += 1
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(j) for j in range(n_vocab - 259)]
    return tokens[:n_vocab], scores[:n_vocab], types[:n_vocab]


def write_f16(spec: SyntheticSpec, dest: Path, *, seed: int = 0) -> Path:
    """Write an F16 GGUF (norms F32) atomically: a .partial file renamed into place."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    # One pool of N(0, 0.02) values, sliced at varying offsets: random weights without
    # generating billions of numbers (the quantizer and the kernels see ordinary data).
    pool = (rng.standard_normal(1 << 24) * 0.02).astype(np.float16)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    w = gguf.GGUFWriter(str(partial), "llama")
    _metadata(w, spec)
    shapes = list(_tensor_shapes(spec))
    for name, shape in shapes:
        f32 = len(shape) == 1
        n = int(np.prod(shape))
        w.add_tensor_info(name, shape, np.dtype(np.float32 if f32 else np.float16), n * (4 if f32 else 2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    offset = 0
    for _name, shape in shapes:
        n = int(np.prod(shape))
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
            continue
        start = offset % (pool.size - 1)
        idx = (np.arange(n, dtype=np.int64) + start) % pool.size if n > pool.size - start else None
        data = pool[idx] if idx is not None else pool[start:start + n]
        w.write_tensor_data(np.ascontiguousarray(data).reshape(shape))
        offset += 7919 * (1 + n % 101)  # a different window for every tensor
    w.close()
    os.replace(partial, dest)
    return dest


def _metadata(w: Any, spec: SyntheticSpec) -> None:
    w.add_name(spec.name)
    w.add_file_type(1)  # MOSTLY_F16
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(spec.n_vocab)
    tokens, scores, types = _vocab(spec.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)


def ensure(name: str, quant: str, *, log: Any = None) -> Path:
    """The cached synthetic model in `quant`, writing the F16 and quantizing as needed."""
    from toolchain.models.requantize import requantize

    spec = PRESETS[name]
    f16 = synthetic_path(name, "F16")
    if not f16.exists():
        if log:
            log(f"writing {f16} ({spec.params / 1e9:.2f}B params, random weights)")
        write_f16(spec, f16)
    if quant == "F16":
        return f16
    dest = synthetic_path(name, quant)
    if not dest.exists():
        if log:
            log(f"quantizing {name} F16 -> {quant}")
        requantize(f16, dest, quant)
    return dest
