"""Dry load on the device: llama.cpp's own allocator sizes the plan before gigabytes are shipped.

Mechanism (llama-cpp-python 0.3.36): the model parameter `no_alloc` ("only load metadata and
simulate memory allocations") plus `load_mode = LLAMA_LOAD_MODE_NONE`: on the mmap path
llama.cpp asserts `!ml.no_alloc` (llama-model.cpp load_tensors) and aborts the process. With
no_alloc the loader never reads tensor data, so only the GGUF header travels: the device gets
the header bytes on stdin and extends them to the file's full size as a sparse file (the loader
checks tensor offsets against the file size). The context is then created with the plan's
settings; llama.cpp logs the sizes its allocator would use (KV, compute, output buffers) and
`llama_model_size` gives the weights. The per-buffer breakdown API (llama_get_memory_breakdown)
is C++ only and not reachable through ctypes, so the log lines are the interface; the parser
below is pinned by a recorded output in the tests.

(a) SCRIPT runs on the target (python3 -c SCRIPT ARGS, header on stdin) and prints one JSON line.
(b) parse() is pure: that output -> DryLoad.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.nouns import Prediction, Selected
from toolchain.transports.base import Transport

MECHANISM = "llama_model_params.no_alloc with load_mode NONE (header-only sparse file)"

SCRIPT = r"""
import ctypes, json, os, sys, tempfile
work, size, ctx, n_batch, kv, fa, swa_full, ngl, threads, n_out = sys.argv[1:11]
out = {"ok": False, "log": []}
def done(code):
    print(json.dumps(out), flush=True)
    sys.exit(code)
try:
    import llama_cpp
except Exception as exc:
    out["error"] = "llama_cpp not importable: %s" % exc
    done(3)
out["llama_cpp"] = getattr(llama_cpp, "__version__", "?")
if "no_alloc" not in [f[0] for f in llama_cpp.llama_model_params._fields_]:
    out["error"] = "this llama-cpp-python has no no_alloc model parameter"
    done(4)
os.makedirs(work, exist_ok=True)
fd, path = tempfile.mkstemp(prefix="edgedeploy-dryload-", suffix=".gguf", dir=work)
try:
    with os.fdopen(fd, "wb") as f:
        f.write(sys.stdin.buffer.read())
        f.truncate(int(size))  # sparse: the tensor data is never read with no_alloc
    keep = []
    @llama_cpp.llama_log_callback
    def log(level, text, user):
        line = text.decode("utf-8", "replace").strip()
        if "size" in line or "cells" in line or "CPU_REPACK" in line or "error" in line.lower():
            keep.append(line)
    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.no_alloc = True
    mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    mp.n_gpu_layers = int(ngl)
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    if not model:
        out["error"] = "llama_model_load_from_file failed"
        out["log"] = keep
        done(5)
    out["model_bytes"] = int(llama_cpp.llama_model_size(model))
    out["n_params"] = int(llama_cpp.llama_model_n_params(model))
    types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = int(ctx); cp.n_batch = int(n_batch); cp.n_ubatch = int(n_batch)
    cp.n_threads = int(threads); cp.n_threads_batch = int(threads)
    cp.type_k = types[kv]; cp.type_v = types[kv]
    cp.flash_attn_type = 1 if fa == "1" else 0
    cp.swa_full = swa_full == "1"
    cp.n_outputs_max = int(n_out)  # the runner reads only the last token's logits
    c = llama_cpp.llama_init_from_model(model, cp)
    out["log"] = keep
    if not c:
        out["error"] = "llama_init_from_model failed"
        done(6)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                out["rss_bytes"] = int(line.split()[1]) * 1024
    out["ok"] = True
finally:
    os.unlink(path)
done(0)
"""

_MIB = 1024.0 * 1024.0
_BUF = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size\s*=\s*([\d.]+) MiB")
_KV = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells")


@dataclass(frozen=True)
class DryLoad:
    ok: bool
    mechanism: str = MECHANISM
    model_bytes: int = 0  # llama_model_size: the weights the allocator places
    kv_bytes: int = 0  # every KV cache (an iSWA model has two)
    kv_cells: list[int] = field(default_factory=list)
    compute_bytes: int = 0  # all compute buffers the scheduler reserved (worst-case graph)
    output_bytes: int = 0  # logits/embeddings buffer
    buffers: dict[str, int] = field(default_factory=dict)  # "CPU compute" -> bytes, as logged
    rss_bytes: int = 0  # VmHWM of the dry-load process (libraries, metadata, vocabulary)
    llama_cpp: str = ""
    error: str | None = None


def parse(stdout: str, stderr: str = "", exit_status: int = 0) -> DryLoad:
    """The script's JSON line (the last one) -> DryLoad; a crash becomes ok=False with the reason."""
    doc: dict[str, Any] | None = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            break
    if doc is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return DryLoad(ok=False, error=f"dry load exited {exit_status} without a result: {tail[:300]}")
    buffers: dict[str, int] = {}
    kv_total, cells = 0, []
    for line in doc.get("log", []):
        m = _BUF.search(line)
        if m:
            key = f"{m.group(1)} {m.group(2)}"
            buffers[key] = buffers.get(key, 0) + int(float(m.group(3)) * _MIB)
        k = _KV.search(line)
        if k:
            kv_total += int(float(k.group(1)) * _MIB)
            cells.append(int(k.group(2)))
    return DryLoad(
        ok=bool(doc.get("ok")), model_bytes=int(doc.get("model_bytes", 0)), kv_bytes=kv_total, kv_cells=cells,
        compute_bytes=sum(v for k, v in buffers.items() if k.endswith(" compute")),
        output_bytes=sum(v for k, v in buffers.items() if k.endswith(" output")), buffers=buffers,
        rss_bytes=int(doc.get("rss_bytes", 0)), llama_cpp=str(doc.get("llama_cpp", "")), error=doc.get("error"),
    )


def header_bytes(path: Path) -> int:
    """Bytes before the tensor data: all that a no_alloc load reads."""
    import gguf

    return int(gguf.GGUFReader(str(path), "r").data_offset)


def script_args(sel: Selected, work_dir: str, file_bytes: int, n_batch: int = 512, swa_full: bool = False,
                n_gpu_layers: int = 0, n_outputs: int = 1) -> list[str]:
    return [work_dir, str(file_bytes), str(sel.ctx), str(n_batch), sel.kv_type, "1" if sel.flash_attn else "0",
            "1" if swa_full else "0", str(n_gpu_layers), str(sel.threads), str(n_outputs)]


def run(transport: Transport, python: str, gguf: Path, sel: Selected, work_dir: str, *, timeout: float = 180.0) -> DryLoad:
    """Send the header, dry-load on the target, parse. Never raises for a failed dry load."""
    with gguf.open("rb") as f:
        header = f.read(header_bytes(gguf))
    argv = [python, "-c", SCRIPT, *script_args(sel, work_dir, gguf.stat().st_size)]
    res = transport.run(argv, timeout=timeout, stdin=header, check=False)
    return parse(res.stdout, res.stderr, res.exit_status)


def compare(pred: Prediction, dry: DryLoad) -> list[dict[str, Any]]:
    """Predicted against the allocator's own sizes, component by component."""
    rows = [("weights", pred.weights_bytes, dry.model_bytes), ("kv cache", pred.kv_bytes, dry.kv_bytes),
            ("compute buffers", pred.compute_bytes, dry.compute_bytes + dry.output_bytes)]
    out = []
    for name, p, a in rows:
        out.append({"component": name, "predicted_bytes": p, "allocator_bytes": a,
                    "error": round((p - a) / a, 4) if a else None})
    return out


def check(transport: Transport, python: str, gguf: Path, sel: Selected, work_dir: str, usable_bytes: int) -> dict[str, Any]:
    """The report's "dry_load" entry: sizes, the comparison, and whether the allocator's sizes fit."""
    from toolchain.core.serde import to_json_dict

    dry = run(transport, python, gguf, sel, work_dir)
    doc: dict[str, Any] = {"result": to_json_dict(dry)}
    if not dry.ok:
        doc["fits"] = None
        return doc
    p = sel.predicted
    # the allocator's sizes replace the predicted components; the runtime overhead stays predicted
    need = p.peak_memory_bytes - p.weights_bytes - p.kv_bytes - p.compute_bytes + dry.model_bytes + dry.kv_bytes \
        + dry.compute_bytes + dry.output_bytes
    doc.update(comparison=compare(p, dry), allocator_peak_bytes=need, usable_bytes=usable_bytes, fits=need <= usable_bytes)
    return doc
