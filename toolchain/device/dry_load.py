"""Dry load, ON the device: llama.cpp's allocator sizes a plan from the GGUF header alone.

Run as `python -c <this file> WORK SIZE CTX N_BATCH KV FA SWA_FULL NGL THREADS N_OUT` with the
header bytes on stdin (toolchain/deploy/dry_load.py sends it and parses what it prints). The header
is extended to the file's full size as a sparse file in WORK (the loader checks tensor offsets
against the file size; with no_alloc it never reads tensor data) and deleted afterwards. Prints one
JSON line: ok, the log lines that carry sizes, llama_model_size, VmHWM, or the error. Exit status:
0 ok, 3 no llama_cpp, 4 no no_alloc parameter, 5 model load failed, 6 context creation failed.

Stdlib + llama_cpp only, Python 3.8 or newer (the board's interpreter).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from typing import Any, TypedDict

# llama.cpp keeps the C pointer to the log callback: the Python object must outlive every load.
_LOG_CALLBACK: Any = None


class Output(TypedDict, total=False):
    """The one JSON line this script prints (toolchain/deploy/dry_load.py reads it back). Every key
    is optional to the reader: a failed load stops before the sizes."""

    ok: bool
    log: list[str]  # the log lines keep_line() kept
    error: str
    llama_cpp: str
    model_bytes: int
    n_params: int
    rss_bytes: int  # VmHWM of this process


def keep_line(line: str) -> bool:
    """The log lines parse() reads: buffer and cache sizes, CPU_REPACK buffers, errors."""
    return "size" in line or "cells" in line or "CPU_REPACK" in line or "error" in line.lower()


def main(argv: list[str]) -> int:
    work, size, ctx, n_batch, kv, fa, swa_full, ngl, threads, n_out = argv[:10]
    out: Output = {"ok": False, "log": []}

    def done(code: int) -> int:
        print(json.dumps(out), flush=True)
        return code

    try:
        import llama_cpp
    except Exception as exc:
        out["error"] = f"llama_cpp not importable: {exc}"
        return done(3)
    out["llama_cpp"] = getattr(llama_cpp, "__version__", "?")
    if "no_alloc" not in [f[0] for f in llama_cpp.llama_model_params._fields_]:
        out["error"] = "this llama-cpp-python has no no_alloc model parameter"
        return done(4)
    os.makedirs(work, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="edgedeploy-dryload-", suffix=".gguf", dir=work)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(sys.stdin.buffer.read())
            f.truncate(int(size))  # sparse: the tensor data is never read with no_alloc
        keep: list[str] = []

        def log(level: int, text: bytes, user: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", "replace").strip()
            if keep_line(line):
                keep.append(line)

        global _LOG_CALLBACK
        _LOG_CALLBACK = llama_cpp.llama_log_callback(log)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.no_alloc = True
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        mp.n_gpu_layers = int(ngl)
        model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
        if not model:
            out["error"] = "llama_model_load_from_file failed"
            out["log"] = keep
            return done(5)
        out["model_bytes"] = int(llama_cpp.llama_model_size(model))
        out["n_params"] = int(llama_cpp.llama_model_n_params(model))
        types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = int(ctx)
        cp.n_batch = int(n_batch)
        cp.n_ubatch = int(n_batch)
        cp.n_threads = int(threads)
        cp.n_threads_batch = int(threads)
        cp.type_k = types[kv]
        cp.type_v = types[kv]
        cp.flash_attn_type = 1 if fa == "1" else 0
        cp.swa_full = swa_full == "1"
        cp.n_outputs_max = int(n_out)  # the runner reads only the last token's logits
        c = llama_cpp.llama_init_from_model(model, cp)
        out["log"] = keep
        if not c:
            out["error"] = "llama_init_from_model failed"
            return done(6)
        rss = vm_hwm_bytes()
        if rss is not None:
            out["rss_bytes"] = rss
        out["ok"] = True
    finally:
        os.unlink(path)
    return done(0)


def vm_hwm_bytes(status: str = "/proc/self/status") -> int | None:
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
