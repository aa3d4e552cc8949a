"""Runtime and measurements: the JSON lines the python snippets print, llama.cpp's system info."""

from __future__ import annotations

import re
from typing import Required, TypedDict

from toolchain.core.nouns import RuntimeDevice
from toolchain.core.serde import typed_dict_from
from toolchain.probe.parsers.text import parse_json_line


class RuntimeInfo(TypedDict, total=False):
    """device/runtime_info.py's line."""

    python: Required[str]
    python_path: str
    bits: int
    pip: bool
    llama_cpp: str | None  # the package version; None when not installed
    llama_cpp_libs: list[str]
    llama_cpp_path: str
    error: str


class LlamaInfo(TypedDict, total=False):
    """device/llama_info.py's line: what llama_cpp says once imported, or why it did not import."""

    version: str | None
    system_info: str
    gpu_offload: bool
    devices: list[dict[str, object]]  # llama.cpp's backend registry (see llama_devices)
    devices_error: str
    error: str


class Membw(TypedDict, total=False):
    """device/membw.py's line."""

    read_bytes_per_s: Required[float]
    read_1t_bytes_per_s: Required[float]
    threads: Required[int]
    buffer_bytes: int
    cpu_ids: list[int]
    method: str


class StorageRead(TypedDict, total=False):
    """device/storage_read.py's line (a speed, or an error saying why not), or dd's summary."""

    path: str | None
    bytes: int
    read_bytes_per_s: float | None
    method: str
    error: str


def parse_runtime(text: str) -> RuntimeInfo | None:
    """device/runtime_info.py: python version and path, pointer size, pip, llama_cpp package metadata."""
    data = parse_json_line(text)
    return typed_dict_from(RuntimeInfo, data) if data is not None else None


def parse_llama(text: str) -> LlamaInfo | None:
    """device/llama_info.py: llama_cpp imported: version, llama_print_system_info, GPU offload."""
    data = parse_json_line(text)
    return typed_dict_from(LlamaInfo, data) if data is not None else None


def parse_membw(text: str) -> Membw | None:
    """device/membw.py: read bandwidth at 1 and N threads."""
    data = parse_json_line(text)
    return typed_dict_from(Membw, data) if data is not None else None


def parse_storage_read(text: str) -> StorageRead | None:
    """device/storage_read.py, or dd's summary line when the target has no python."""
    data = parse_json_line(text)
    if data is not None:
        read = typed_dict_from(StorageRead, data)
        return read if read is not None and (read.get("read_bytes_per_s") is not None or read.get("error")) else None
    # GNU/busybox dd: '67108864 bytes (67 MB, 64 MiB) copied, 0.52 s, 129 MB/s'
    m = re.search(r"^(\d+) bytes .*?copied, ([\d.]+) s", text, re.MULTILINE)
    if m and float(m.group(2)) > 0:
        return {"read_bytes_per_s": int(m.group(1)) / float(m.group(2)), "bytes": int(m.group(1)),
                "method": "dd iflag=direct of an existing file"}
    return None


def backends_from_system_info(info: str) -> list[str]:
    """llama_print_system_info 'CUDA : ARCHS = 870 | ... | CPU : NEON = 1 | ...' -> ['cuda', 'cpu'].

    Each registered ggml backend prints 'NAME : ' before its features; features use ' = '."""
    names = re.findall(r"(?:^|\|\s*|:\s*)([A-Za-z][A-Za-z0-9_\-]*) : ", info)
    seen: list[str] = []
    for name in names:
        if name.lower() not in seen:
            seen.append(name.lower())
    return seen


def system_info_features(info: str) -> list[str]:
    """The ISA switches llama.cpp was built with and found: 'NEON = 1' -> 'neon'."""
    return [m.lower() for m, on in re.findall(r"\b([A-Z][A-Z0-9_]*) = (\d+)", info) if on != "0"]


def llama_devices(items: list[dict[str, object]]) -> list[RuntimeDevice]:
    """device/llama_info.py's registry listing -> RuntimeDevice (entries with no name, or more than
    64 of them, are a misbehaving board's and dropped)."""
    out: list[RuntimeDevice] = []
    for d in items[:64]:
        name, backend = d.get("name"), d.get("backend")
        if not isinstance(name, str) or not name or not isinstance(backend, str):
            continue
        free, total = d.get("memory_free_bytes"), d.get("memory_total_bytes")
        desc, kind = d.get("description"), d.get("type")
        out.append(RuntimeDevice(name=name[:64], backend=backend[:32], description=desc[:200] if isinstance(desc, str) else "",
                                 type=kind if kind in ("cpu", "gpu", "igpu", "accel") else "unknown",
                                 memory_free_bytes=free if isinstance(free, int) and free >= 0 else 0,
                                 memory_total_bytes=total if isinstance(total, int) and total >= 0 else 0))
    return out


def backend_names(devices: list[RuntimeDevice]) -> list[str]:
    """The planner's backend names the registry's devices give: Vulkan -> vulkan, MTL/Metal -> metal."""
    from toolchain.device.runner import backend_of

    names: list[str] = []
    for d in devices:
        b = "cpu" if d.type == "cpu" else backend_of(d.backend if d.backend.lower() != "mtl" else "metal")
        if b not in names:
            names.append(b)
    return names
