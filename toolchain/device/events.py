"""The runner's telemetry format, defined once for both ends.

On the device the runner imports this file from its own directory (it is shipped beside
runner.py) and writes events with `emit`; on the host toolchain.deploy.telemetry reads them back
with the names and TypedDicts below. One JSON object per line, keys sorted, each line flushed and
fsynced as it is written, so a runner killed mid-run still leaves what it measured so far.

Stdlib only, Python 3.8 or newer (the board's interpreter). JSON keys: add, never rename.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Mapping, TypedDict

START = "start"  # the runner began (pid, boot_id, its settings)
LOADED = "loaded"  # the model is loaded
MEMORY = "memory"  # VmHWM grew by a step (so an OOM kill still tells how high it got)
PROGRESS = "progress"  # one round of prompts done in a sustained run
RESULT = "result"  # every measurement; the event the host turns into Telemetry
ERROR = "error"  # the bench failed; kind "oom" for MemoryError
NAMES = (START, LOADED, MEMORY, PROGRESS, RESULT, ERROR)

# One line as the host parses it: whatever a runner of any version wrote (runtime alias, so the
# host can use it in dataclass fields; typing.Dict because the board may run Python 3.8).
Event = Dict[str, Any]


class Header(TypedDict):
    """Every event carries these two keys (added by emit)."""

    event: str
    time: float  # time.time() on the device


class RunSettings(TypedDict):
    """The start event's "settings": settings.json less the prompts and the release id."""

    model_file: str
    threads: int
    ctx: int
    kv_type: str
    flash_attn: bool
    use_mmap: bool
    n_batch: int
    decode_tokens: int
    model: str
    quant: str
    backend: str
    n_gpu_layers: int


class StartEvent(Header):
    mode: str
    settings: RunSettings
    pid: int
    boot_id: str | None


class LoadedEvent(Header):
    load_s: float
    peak_rss_bytes: int


class MemoryEvent(Header):
    peak_rss_bytes: int


class ProgressEvent(Header):
    rounds: int
    decode_tokens: int
    peak_rss_bytes: int
    temperature_c: float | None
    throttled: int | None


class ErrorEvent(Header):
    kind: str  # "oom" or the exception's class name
    message: str
    peak_rss_bytes: int


class Result(TypedDict):
    """The measured fields of the result event (all measured on the device, none on the host)."""

    load_s: float
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_ms_p50: float
    decode_ms_p90: float
    decode_ms_p99: float
    sustained_decode_tokens_per_s: float  # over the hottest quarter of the per-token latencies
    sustained_s: float
    peak_rss_bytes: int
    llama_cpp: str
    threads: int
    ctx: int
    kv_type: str
    model_sha256: str
    prompt_tokens: int
    decode_tokens: int
    temperature_before_c: float | None
    temperature_after_c: float | None
    throttled_before: int | None  # vcgencmd get_throttled bits; None without vcgencmd
    throttled_after: int | None
    throttled_during: int | None
    power_source: str | None
    power_error: str | None
    energy_j: float | None
    energy_j_per_token: float | None
    latencies_ms: list[float]
    rounds: int
    boot_id: str | None
    bench_wall_s: float  # the timed part: the prompts' prefill and decode
    other_cpu_s: float | None  # CPU seconds other processes used meanwhile (None off Linux)
    steal_s: float | None  # CPU seconds the hypervisor took meanwhile
    load_before: float | None
    load_after: float | None
    cooled_s: float  # waited for a hot board to cool before the bench
    backend: str  # what llama.cpp's load log says ran: cpu, cuda, vulkan, metal, opencl
    device: str  # its device name (Vulkan0, CUDA0), "" on the CPU
    gpu_layers_offloaded: int  # llama.cpp's "offloaded N/M layers to GPU" (N counts the output layer)
    gpu_layers_total: int
    device_memory_bytes: int  # model, KV and compute buffers on non-CPU devices


class ResultEvent(Header, Result):
    pass


RESULT_FIELDS: tuple[str, ...] = tuple(Result.__annotations__)


def line(event: str, data: Mapping[str, object]) -> str:
    """One event as its JSON line (without the newline); `event` and `time` win over data's."""
    doc = dict(data)
    doc["event"] = event
    doc["time"] = time.time()
    return json.dumps(doc, sort_keys=True)


def emit(out: str, event: str, **data: object) -> str:
    """Append one event to `out` (flushed and fsynced) and echo it on stdout; returns the line."""
    text = line(event, data)
    with open(out, "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(text, flush=True)
    return text
