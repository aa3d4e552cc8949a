"""Pure parsers: raw command output in, facts out. Each is pinned by recorded real outputs
(tests/fixtures/probe/). Unknown or unparseable input yields None, never an exception."""

from __future__ import annotations

import json
import re
from typing import Any

# CPU features that change which llama.cpp kernels run (ggml-cpu feature detection).
LLAMA_FEATURES = (
    "asimd", "neon", "dotprod", "asimddp", "i8mm", "sve", "sve2", "fphp", "asimdhp", "bf16",
    "sse3", "ssse3", "avx", "avx2", "f16c", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "vfpv4",
)


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: bytes}; 'kB' values scaled, bare numbers (HugePages_*) kept."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?\s*$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    return out


def available_memory(meminfo: dict[str, int]) -> tuple[int | None, str]:
    """MemAvailable, or (kernels before 3.14) MemFree + Buffers + Cached, saying which."""
    if "MemAvailable" in meminfo:
        return meminfo["MemAvailable"], "MemAvailable"
    parts = [meminfo.get(k) for k in ("MemFree", "Buffers", "Cached")]
    if parts[0] is None:
        return None, "no MemAvailable or MemFree in /proc/meminfo"
    return sum(p or 0 for p in parts), "MemFree+Buffers+Cached (kernel lacks MemAvailable)"


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """/proc/cpuinfo -> processors, model name, features (lower-case), per-cpu parts."""
    processors: list[dict[str, str]] = []
    header: dict[str, str] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor" and value.isdigit():
            current = {"processor": value}
            processors.append(current)
        elif current is not None:
            current[key] = value
        else:
            header[key] = value
    flags: set[str] = set()
    for p in processors or [header]:
        flags.update((p.get("flags") or p.get("features") or "").lower().split())
    model = next((p.get("model name") for p in processors if p.get("model name")), None)
    model = model or header.get("model name") or header.get("hardware") or header.get("processor")
    return {
        "count": len(processors),
        "model_name": model,
        "hardware": header.get("hardware") or next((p.get("hardware") for p in processors if p.get("hardware")), None),
        "features": sorted(flags),
        "parts": {int(p["processor"]): p.get("cpu part") or p.get("model name") or "" for p in processors},
    }


def llama_features(flags: list[str]) -> list[str]:
    return [f for f in LLAMA_FEATURES if f in set(flags)]


def parse_max_freq(text: str) -> dict[int, float]:
    """'<cpu id> <kHz>' lines -> {cpu: MHz}."""
    out: dict[int, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1]) / 1000.0
    return out


def parse_df(text: str) -> dict[str, Any] | None:
    """POSIX `df -Pk` -> free bytes, filesystem device and mount point."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    parts = " ".join(lines[1:]).split()
    if len(parts) < 6 or not parts[3].isdigit():
        return None
    return {"device": parts[0], "free_bytes": int(parts[3]) * 1024, "mount": parts[5]}


def parse_uname(text: str) -> dict[str, str | None]:
    lines = [line.strip() for line in text.splitlines()]
    lines += [""] * (3 - len(lines))
    return {"system": lines[0] or None, "kernel": lines[1] or None, "machine": lines[2] or None}


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z_]+)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
        m2 = re.match(r"^(ProductName|ProductVersion):\s*(.*)$", line.strip())  # macOS sw_vers
        if m2:
            out[m2.group(1)] = m2.group(2)
    return out


def parse_getprop(text: str) -> dict[str, str]:
    """Android `getprop` lines '[key]: [value]' (also tolerates 'key=value' dumps)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*\[([^\]]+)\]\s*:\s*\[(.*)\]\s*$", line)
        if not m:
            m = re.match(r"^\s*([a-z0-9_.\-]+)\s*[=:]\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def parse_cgroup_limit(text: str) -> int | None:
    value = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not value.isdigit():
        return None  # "max", or no cgroup file
    limit = int(value)
    return None if limit >= 1 << 60 else limit  # v1 reports "unlimited" as a huge number


def parse_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def clusters_from(parts: dict[int, str], max_mhz: dict[int, float]) -> list[dict[str, Any]]:
    """Group cores by max frequency (else CPU part): big clusters first."""
    ids = sorted(set(parts) | set(max_mhz))
    groups: dict[tuple[float, str], list[int]] = {}
    for cpu in ids:
        key = (max_mhz.get(cpu, 0.0), parts.get(cpu, ""))
        groups.setdefault(key, []).append(cpu)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    return [
        {"name": _part_name(part) or f"{mhz:.0f} MHz cores", "cores": len(cpus), "cpu_ids": cpus, "max_mhz": mhz or None}
        for (mhz, part), cpus in ordered
    ]


_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}


def _part_name(part: str) -> str:
    return _ARM_PARTS.get(part.lower(), part)
