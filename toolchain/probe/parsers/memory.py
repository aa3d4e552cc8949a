"""Memory: /proc/meminfo, cgroup limits, swap and zram, Android's low-memory killer."""

from __future__ import annotations

import re
from typing import TypedDict

from toolchain.probe.parsers.text import grep_h, to_int

UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge page-rounded number


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: bytes}; 'kB' values scaled, bare numbers (HugePages_*) kept."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_()]+):\s+(\d+)(\s+kB)?\s*$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def available_memory(meminfo: dict[str, int]) -> tuple[int | None, str]:
    """MemAvailable, or on kernels before 3.14 the kernel's own estimate without its watermarks.

    Cached includes shmem/tmpfs, which cannot be dropped, so the fallback counts the file LRU
    lists (Active(file) + Inactive(file)) rather than Buffers + Cached."""
    if "MemAvailable" in meminfo:
        return meminfo["MemAvailable"], "MemAvailable"
    free = meminfo.get("MemFree")
    if free is None:
        return None, "no MemAvailable or MemFree in /proc/meminfo"
    if "Active(file)" in meminfo and "Inactive(file)" in meminfo:
        file_lru = meminfo["Active(file)"] + meminfo["Inactive(file)"]
        return free + file_lru + meminfo.get("SReclaimable", 0), "MemFree+Active(file)+Inactive(file)+SReclaimable (kernel lacks MemAvailable)"
    rest = meminfo.get("Buffers", 0) + meminfo.get("Cached", 0) - meminfo.get("Shmem", 0)
    return free + max(0, rest), "MemFree+Buffers+Cached-Shmem (kernel lacks MemAvailable)"


class CgroupLimit(TypedDict):
    version: str  # v1 | v2
    path: str  # cgroup path, from the process's own up to the root
    limit_bytes: int | None  # None: no limit
    usage_bytes: int | None


def parse_cgroup(text: str) -> list[CgroupLimit]:
    """Lines 'cgroup2|cgroup PATH LIMIT [USAGE]' printed for the process's cgroup and each parent."""
    out: list[CgroupLimit] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("cgroup", "cgroup2"):
            continue
        limit = to_int(parts[2])
        if parts[2] != "max" and limit is None:
            continue
        out.append({
            "version": "v2" if parts[0] == "cgroup2" else "v1",
            "path": parts[1] or "/",
            "limit_bytes": limit if limit is not None and limit < UNLIMITED else None,
            "usage_bytes": to_int(parts[3]) if len(parts) > 3 else None,
        })
    return out


class Swap(TypedDict):
    total_bytes: int
    used_bytes: int
    zram_bytes: int  # uncompressed capacity of the zram devices (disksize)
    zram_devices: list[str]


def parse_swaps(text: str) -> Swap:
    """/proc/swaps (KiB) followed by `grep -sH . zram*/disksize` (bytes) from /sys/block."""
    out: Swap = {"total_bytes": 0, "used_bytes": 0, "zram_bytes": 0, "zram_devices": []}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].startswith("/") and parts[2].isdigit() and parts[3].isdigit():
            out["total_bytes"] += int(parts[2]) * 1024
            out["used_bytes"] += int(parts[3]) * 1024
    for path, value in grep_h(text):
        m = re.match(r"^(zram\d+)/disksize$", path)
        size = to_int(value)
        if m and size:
            out["zram_devices"].append(m.group(1))
            out["zram_bytes"] += size
    return out


class Oom(TypedDict):
    oom_score_adj: int | None
    minfree_pages: list[int]  # in-kernel lowmemorykiller (Android before 9)
    adj: list[int]
    page_size: int | None


def parse_oom(text: str) -> Oom:
    """`grep -sH . /proc/self/oom_score_adj /sys/module/lowmemorykiller/parameters/{minfree,adj}`,
    then 'pagesize:N' (getconf PAGESIZE: lmk levels count pages)."""
    out: Oom = {"oom_score_adj": None, "minfree_pages": [], "adj": [], "page_size": None}
    for path, value in grep_h(text):
        name = path.rsplit("/", 1)[-1]
        numbers = [to_int(v) for v in value.split(",")]
        if any(n is None for n in numbers):
            continue
        clean = [n for n in numbers if n is not None]
        if name == "oom_score_adj" and len(clean) == 1:
            out["oom_score_adj"] = clean[0]
        elif name == "minfree":
            out["minfree_pages"] = clean
        elif name == "adj":
            out["adj"] = clean
        elif name == "pagesize" and len(clean) == 1 and clean[0] > 0:
            out["page_size"] = clean[0]
    return out


def lmk_levels(props: dict[str, str], oom: Oom) -> list[tuple[int, int]]:
    """Android low-memory-killer levels as (free pages, oom_score_adj), from lmkd's
    sys.lmk.minfree_levels ('18432:0,23040:100,...') or the old in-kernel driver's parameters.

    The kernel driver's adj values are oom_adj (-17..15); lmkd's are oom_score_adj (-1000..1000)."""
    levels: list[tuple[int, int]] = []
    for item in props.get("sys.lmk.minfree_levels", "").split(","):
        m = re.match(r"^\s*(\d+):(-?\d+)\s*$", item)
        if m:
            levels.append((int(m.group(1)), int(m.group(2))))
    if levels:
        return levels
    if oom["minfree_pages"] and len(oom["minfree_pages"]) == len(oom["adj"]):
        scale = 1000 / 17 if max(oom["adj"]) <= 17 else 1.0  # oom_adj -> oom_score_adj
        return [(pages, round(adj * scale)) for pages, adj in zip(oom["minfree_pages"], oom["adj"], strict=True)]
    return []
