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

(a) toolchain/device/dry_load.py runs on the target (python3 -c SOURCE ARGS, header on stdin) and
    prints one JSON line; SCRIPT is that source, as sent.
(b) parse() is pure: that output -> DryLoad.
(c) check() compares the allocator's sizes with the prediction -> DryLoadReport (the report's
    "dry_load" entry).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.core.nouns import Prediction, Selected
from toolchain.core.serde import typed_dict_from
from toolchain.device import device_source
from toolchain.device.dry_load import Output
from toolchain.transports.base import Transport

MECHANISM = "llama_model_params.no_alloc with load_mode NONE (header-only sparse file)"

SCRIPT = device_source("dry_load.py")

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
    doc: Output | None = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            doc = typed_dict_from(Output, raw) if isinstance(raw, dict) else None  # wrong-typed keys read as absent
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
        ok=doc.get("ok", False), model_bytes=doc.get("model_bytes", 0), kv_bytes=kv_total, kv_cells=cells,
        compute_bytes=sum(v for k, v in buffers.items() if k.endswith(" compute")),
        output_bytes=sum(v for k, v in buffers.items() if k.endswith(" output")), buffers=buffers,
        rss_bytes=doc.get("rss_bytes", 0), llama_cpp=doc.get("llama_cpp", ""), error=doc.get("error"),
    )


def header_bytes(path: Path) -> int:
    """Bytes before the tensor data: all that a no_alloc load reads. From the validated (cached)
    parse: gguf.GGUFReader maps every tensor, seconds of CPU under the GIL per ship of a big file."""
    from toolchain.models.gguf_reader import read_gguf

    return read_gguf(path).data_offset


def script_args(sel: Selected, work_dir: str, file_bytes: int, n_batch: int = 512, swa_full: bool = False,
                n_gpu_layers: int = 0, n_outputs: int = 1) -> list[str]:
    return [work_dir, str(file_bytes), str(sel.ctx), str(n_batch), sel.kv_type, "1" if sel.flash_attn else "0",
            "1" if swa_full else "0", str(n_gpu_layers), str(sel.threads), str(n_outputs)]


def run(transport: Transport, python: str, gguf: Path, sel: Selected, work_dir: str, *, timeout: float = 180.0) -> DryLoad:
    """Send the header, dry-load on the target, parse. Never raises for a failed dry load."""
    with gguf.open("rb") as f:
        header = f.read(header_bytes(gguf))
    argv = [python, "-c", SCRIPT, *script_args(sel, work_dir, gguf.stat().st_size, n_gpu_layers=sel.placement.n_gpu_layers())]
    res = transport.run(argv, timeout=timeout, stdin=header, check=False)
    return parse(res.stdout, res.stderr, res.exit_status)


@dataclass(frozen=True)
class ComparisonRow:
    component: str  # weights | kv cache | compute buffers
    predicted_bytes: int
    allocator_bytes: int
    error: float | None  # (predicted - allocator) / allocator, 4 decimals; None when the allocator said 0


@dataclass(frozen=True)
class DryLoadReport:
    """The report's "dry_load" entry. fits is None when the dry load could not run (result.error
    says why); then comparison is empty and allocator_peak_bytes None."""

    result: DryLoad
    fits: bool | None
    usable_bytes: int
    comparison: list[ComparisonRow] = field(default_factory=list)
    allocator_peak_bytes: int | None = None  # the predicted peak with the allocator's components in
    device_bytes: int = 0  # the allocator's buffers on the accelerator (GPU placements)
    device_budget_bytes: int | None = None  # its free memory (None: unified memory, or the CPU)


def compare(pred: Prediction, dry: DryLoad) -> list[ComparisonRow]:
    """Predicted against the allocator's own sizes, component by component."""
    rows = [("weights", pred.weights_bytes, dry.model_bytes), ("kv cache", pred.kv_bytes, dry.kv_bytes),
            ("compute buffers", pred.compute_bytes, dry.compute_bytes + dry.output_bytes)]
    return [ComparisonRow(name, p, a, round((p - a) / a, 4) if a else None) for name, p, a in rows]


def allocator_peak_bytes(pred: Prediction, dry: DryLoad) -> int:
    """The allocator's sizes replace the predicted components; the runtime overhead stays predicted."""
    return pred.peak_memory_bytes - pred.weights_bytes - pred.kv_bytes - pred.compute_bytes + dry.model_bytes + dry.kv_bytes \
        + dry.compute_bytes + dry.output_bytes


def device_buffer_bytes(dry: DryLoad) -> int:
    """The allocator's buffers on an accelerator: every device but the CPU and pinned host memory."""
    total = 0
    for key, n in dry.buffers.items():
        name = key.split(" ", 1)[0]
        if name.upper() != "CPU" and not name.upper().startswith("CPU_") and not name.endswith("_Host"):
            total += n
    return total


def report(pred: Prediction, dry: DryLoad, usable_bytes: int, device_budget_bytes: int | None = None) -> DryLoadReport:
    """A dry load's result against the prediction, the usable memory and the accelerator's free
    memory where the plan placed layers on one with its own (pure)."""
    if not dry.ok:
        return DryLoadReport(result=dry, fits=None, usable_bytes=usable_bytes)
    need = allocator_peak_bytes(pred, dry)
    dev = device_buffer_bytes(dry)
    fits = need <= usable_bytes and (device_budget_bytes is None or dev <= device_budget_bytes)
    return DryLoadReport(result=dry, fits=fits, usable_bytes=usable_bytes, comparison=compare(pred, dry), allocator_peak_bytes=need,
                         device_bytes=dev, device_budget_bytes=device_budget_bytes)


def check(transport: Transport, python: str, gguf: Path, sel: Selected, work_dir: str, usable_bytes: int) -> DryLoadReport:
    """Dry-load on the target with the plan's placement: sizes, the comparison, whether they fit."""
    budget = sel.placement.device_budget_bytes if sel.placement.offloaded else None
    return report(sel.predicted, run(transport, python, gguf, sel, work_dir), usable_bytes, budget)
