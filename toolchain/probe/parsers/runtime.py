"""Runtime and measurements: the JSON lines the python snippets print, llama.cpp's system info."""

from __future__ import annotations

import re
from typing import Any

from toolchain.probe.parsers.text import parse_json_line


def parse_runtime(text: str) -> dict[str, Any] | None:
    """device/runtime_info.py: python version and path, pointer size, pip, llama_cpp package metadata."""
    data = parse_json_line(text)
    return data if data is not None and isinstance(data.get("python"), str) else None


def parse_llama(text: str) -> dict[str, Any] | None:
    """device/llama_info.py: llama_cpp imported: version, llama_print_system_info, GPU offload."""
    return parse_json_line(text)


def parse_membw(text: str) -> dict[str, Any] | None:
    """device/membw.py: read bandwidth at 1 and N threads."""
    data = parse_json_line(text)
    ok = data is not None and all(isinstance(data.get(k), (int, float)) for k in ("read_bytes_per_s", "read_1t_bytes_per_s", "threads"))
    return data if ok else None


def parse_storage_read(text: str) -> dict[str, Any] | None:
    """device/storage_read.py, or dd's summary line when the target has no python."""
    data = parse_json_line(text)
    if data is not None:
        return data if isinstance(data.get("read_bytes_per_s"), (int, float)) or data.get("error") else None
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
