#!/usr/bin/env python3
"""edgedeploy first-contact calibration: runs ON the device, stdlib + llama_cpp (+ numpy) only.

Decode speed is bytes read per token over what the memory system and llama.cpp's kernels reach,
plus a fixed cost per token and per layer. This measures those on the device itself, with the
runner's own decode loop (runner.Decoder) and thread count, so the first plan of a device rests
on what llama.cpp does there rather than on a memchr read rate:

  1. writes a llama-architecture GGUF with random F16 weights (a 512-token vocabulary: nothing
     but the layers is read per token), sized to the last-level cache x 4 (at least 32 MiB of
     Q4_0 weights) and to a third of the free memory at most;
  2. quantizes it on the device (llama_model_quantize, "pure": every tensor in the family's own
     type) into each kernel family the planner predicts: Q4_K, Q6_K, Q8_0, Q4_0 (F16 is the file);
  3. writes a deep F16 model (a small model's layers, three times as many: the cost per layer)
     and a tiny 2-layer one whose time is almost all the fixed per-token cost;
  4. decodes WARMUP + TOKENS tokens on each, one at a time, twice (the second pass in reverse
     order), and reports the faster median seconds per token, with the bytes each token reads
     split by ggml type; the load average before and after says whether the device was busy.

One JSON line per model goes to --out (CalibrationResult below), then a "done" line with the wall
time. Everything it wrote is removed at the end. Nothing large crosses the link: the host ships
this file, runner.py and events.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import sys
import time
from typing import TYPE_CHECKING, Sequence, TypedDict

HERE = os.path.dirname(os.path.abspath(__file__))

if TYPE_CHECKING:
    from toolchain.device import runner
elif __package__:  # imported as toolchain.device.calibrate (host-side tests)
    from . import runner
else:
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import runner

FAMILIES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0", "F16")
# llama_ftype whose base type is the family (with params.pure every tensor gets it)
FTYPE = {"Q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
         "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
GGML_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
BLOCK = {"F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}
WARMUP, TOKENS = 4, 24
N_VOCAB = 512
MIN_WEIGHTS = 32 << 20  # of the smallest family (Q4_0) at least


class CalibrationResult(TypedDict):
    """One measured model (the line the host turns into a device measurement)."""

    model: str  # calibration-<family>[-<layers>l]
    family: str  # the ggml type of its weights
    n_layer: int
    bytes_per_token: int  # weights read per decoded token
    bytes_by_type: dict[str, int]
    rows_per_token: int  # matrix rows the token's matmuls produce
    decode_s: float  # median seconds per token
    decode_s_p90: float
    threads: int
    ctx: int


class Shape:
    def __init__(self, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int) -> None:
        self.n_layer, self.n_embd, self.n_head, self.n_head_kv, self.n_ff = n_layer, n_embd, n_head, n_head_kv, n_ff
        self.head_dim = n_embd // n_head

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, (row length, rows)) in GGUF order (ne0 first); 1-D tensors are norms."""
        e, hd = self.n_embd, self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (e, N_VOCAB))]
        for il in range(self.n_layer):
            p = f"blk.{il}."
            out += [(p + "attn_norm.weight", (e,)), (p + "attn_q.weight", (e, self.n_head * hd)),
                    (p + "attn_k.weight", (e, self.n_head_kv * hd)), (p + "attn_v.weight", (e, self.n_head_kv * hd)),
                    (p + "attn_output.weight", (self.n_head * hd, e)), (p + "ffn_norm.weight", (e,)),
                    (p + "ffn_gate.weight", (e, self.n_ff)), (p + "ffn_up.weight", (e, self.n_ff)),
                    (p + "ffn_down.weight", (self.n_ff, e))]
        out.append(("output_norm.weight", (e,)))
        return out  # tied embeddings: token_embd is also the output projection

    def rows(self) -> int:
        """Matrix rows one token's matmuls produce (token_embd too: it is the tied output)."""
        return sum(dims[1] for _name, dims in self.tensors() if len(dims) > 1)

    def bytes_by_type(self, family: str) -> dict[str, int]:
        """What one decoded token reads: every weight (token_embd too: it is the tied output)."""
        by: dict[str, int] = {}
        for _name, dims in self.tensors():
            t = "F32" if len(dims) == 1 else family
            block, size = BLOCK[t]
            n = dims[0] // block * size * (dims[1] if len(dims) > 1 else 1)
            by[t] = by.get(t, 0) + n
        return by


# Calibration layers: a small model's shape (n_ff and n_embd multiples of 256, as K-quants need).
BIG = dict(n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816)
TINY = dict(n_embd=128, n_head=2, n_head_kv=2, n_ff=256)
# A small model's layers (about SmolLM2-135M's; K-quants need widths of multiples of 256), three
# times as many as BIG's at about its bytes.
DEEP = dict(n_embd=512, n_head=8, n_head_kv=2, n_ff=1536)


# --- a minimal GGUF v3 writer -------------------------------------------------------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, value: object) -> bytes:
    out = _str(key)
    if isinstance(value, bool):
        return out + struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return out + struct.pack("<II", 4, value)  # uint32
    if isinstance(value, float):
        return out + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return out + struct.pack("<I", 8) + _str(value)
    assert isinstance(value, list) and value
    if isinstance(value[0], str):
        return out + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_str(v) for v in value)
    if isinstance(value[0], float):
        return out + struct.pack("<IIQ", 9, 6, len(value)) + struct.pack(f"<{len(value)}f", *value)
    return out + struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)


def write_gguf(path: str, shape: Shape, seed: int = 0) -> None:
    """F16 weights (norms F32) drawn from one pool of N(0, 0.02) values at shifting offsets."""
    import numpy as np

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581t{i}" for i in range(N_VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259)
    meta = {
        "general.architecture": "llama", "general.name": "edgedeploy calibration", "general.file_type": 1,
        "llama.context_length": 2048, "llama.embedding_length": shape.n_embd, "llama.block_count": shape.n_layer,
        "llama.feed_forward_length": shape.n_ff, "llama.attention.head_count": shape.n_head,
        "llama.attention.head_count_kv": shape.n_head_kv, "llama.rope.dimension_count": shape.head_dim,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": N_VOCAB,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(N_VOCAB - 259)],
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True, "general.alignment": 32,
    }
    tensors = shape.tensors()
    infos, offset = b"", 0
    for name, dims in tensors:
        t = "F32" if len(dims) == 1 else "F16"
        infos += _str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", GGML_TYPE[t], offset)
        offset += -(-math.prod(dims) * BLOCK[t][1] // 32) * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(_kv(k, v) for k, v in meta.items()) + infos
    pool = (np.random.default_rng(seed).standard_normal(1 << 22) * 0.02).astype(np.float16)
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(head + b"\0" * (-len(head) % 32))
        start = 0
        for _name, dims in tensors:
            n = math.prod(dims)
            if len(dims) == 1:
                data = np.ones(n, dtype=np.float32).tobytes()
            else:
                idx = (np.arange(n, dtype=np.int64) + start) % pool.size
                data = pool[idx].tobytes()
                start += 7919
            f.write(data + b"\0" * (-len(data) % 32))
    os.replace(partial, path)


def quantize(src: str, dest: str, family: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPE[family])
    params.nthread = threads
    params.pure = True  # no mixed recipes: every tensor in the family's own type
    params.output_tensor_type = GGML_TYPE[family]
    params.token_embedding_type = GGML_TYPE[family]
    rc = llama_cpp.llama_model_quantize(src.encode(), dest.encode(), params)
    if rc != 0 or not os.path.exists(dest):
        raise RuntimeError(f"llama_model_quantize to {family} failed (code {rc})")


# --- measuring ------------------------------------------------------------------------------------


def measure(path: str, threads: int, ctx: int) -> tuple[float, float]:
    """(median, p90) seconds per decoded token, through the runner's decode loop."""
    settings = runner.Settings(model_file=path, threads=threads, ctx=ctx, kv_type="f16", flash_attn=False, use_mmap=True,
                               n_batch=64, decode_tokens=TOKENS, model="calibration", quant="", release_id="", prompts=[])
    llm = runner.load(settings)
    dec = runner.Decoder(llm, settings.n_batch)
    try:
        tok = dec.prefill([1] + [259 + i for i in range(7)])
        times = []
        for i in range(WARMUP + TOKENS):
            t0 = time.perf_counter()
            tok = dec.step(259 + (tok + i) % (N_VOCAB - 259))  # any token: the weights are random
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
    finally:
        dec.close()
        llm.close()
    return statistics.median(times), runner.percentile(times, 0.9)


def last_level_cache_bytes() -> int:
    sizes = []
    for d in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")) if os.path.isdir("/sys/devices/system/cpu/cpu0/cache") else []:
        text = runner.read(f"/sys/devices/system/cpu/cpu0/cache/{d}/size") or ""
        text = text.strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KM")) * mult)
        except ValueError:
            continue
    return max(sizes, default=4 << 20)


def big_layers(llc: int, free: int) -> int:
    per_layer_q4 = sum(Shape(1, **BIG).bytes_by_type("Q4_0").values())
    per_layer_f16 = sum(Shape(1, **BIG).bytes_by_type("F16").values())
    want = max(4 * llc, MIN_WEIGHTS)
    layers = max(4, -(-want // per_layer_q4))
    return max(2, min(layers, free // 3 // per_layer_f16))


def emit(out: str, doc: object) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(doc) + "\n")
    print(json.dumps(doc), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="edgedeploy first-contact calibration (runs on the device)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True, help="a directory for the models (removed at the end)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args(argv)
    start = time.monotonic()
    families = [f for f in args.families.split(",") if f in FAMILIES]
    os.makedirs(args.work, exist_ok=True)
    free = (runner.status_bytes("MemAvailable", runner.read("/proc/meminfo")) or (1 << 30))
    try:
        n_big = big_layers(last_level_cache_bytes(), free)
        big = Shape(n_big, **BIG)
        f16 = os.path.join(args.work, "F16.gguf")
        write_gguf(f16, big)
        models: list[tuple[str, str, Shape, str]] = []
        for fam in families:
            path = f16 if fam == "F16" else os.path.join(args.work, f"{fam}.gguf")
            if fam != "F16":
                quantize(f16, path, fam, args.threads)
            models.append((f"calibration-{fam}", fam, big, path))
        # Each family again in DEEP's narrow layers, three times as many: beside BIG, per family, the
        # cost of a layer read from memory (each op's ramp-up and thread barrier), which the
        # families share, is told apart from each family's rate per byte.
        per_layer_deep = sum(Shape(1, **DEEP).bytes_by_type("F16").values())
        deep = Shape(max(2, min(3 * n_big, free // 3 // per_layer_deep)), **DEEP)
        deep_f16 = os.path.join(args.work, "deep-F16.gguf")
        write_gguf(deep_f16, deep, seed=1)
        for fam in families:
            path = deep_f16 if fam == "F16" else os.path.join(args.work, f"deep-{fam}.gguf")
            if fam != "F16":
                quantize(deep_f16, path, fam, args.threads)
            models.append((f"calibration-{fam}-deep", fam, deep, path))
        for layers in (2,):
            tiny = Shape(layers, **TINY)
            path = os.path.join(args.work, f"tiny-{layers}.gguf")
            write_gguf(path, tiny, seed=layers)
            models.append((f"calibration-F16-{layers}l", "F16", tiny, path))
        load_before = os.getloadavg()[0]
        # Two passes, the second in reverse order, and the faster of each model's two medians: a
        # burst of other work on the device slows one pass of a model, rarely both.
        best: dict[str, tuple[float, float]] = {}
        for order in (models, models[::-1]):
            for name, _fam, _shape, path in order:
                median, p90 = measure(path, args.threads, args.ctx)
                if name not in best or median < best[name][0]:
                    best[name] = (median, p90)
        for name, fam, shape, _path in models:
            by = shape.bytes_by_type(fam)
            result: CalibrationResult = {"model": name, "family": fam, "n_layer": shape.n_layer, "bytes_per_token": sum(by.values()),
                                         "bytes_by_type": by, "rows_per_token": shape.rows(), "decode_s": best[name][0],
                                         "decode_s_p90": best[name][1],
                                         "threads": args.threads, "ctx": args.ctx}
            emit(args.out, result)
        emit(args.out, {"done": True, "wall_s": round(time.monotonic() - start, 2), "big_layers": n_big,
                        "load_before": load_before, "load_after": os.getloadavg()[0]})
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
