"""MemoryFacts (pure): what a model may use, and the stated basis for it.

usable = the tightest of: MemAvailable - reserve; the binding cgroup limit's headroom - a
margin; on Android, what lmkd lets a process grow to; on a 32-bit userland, the address space.
"""

from __future__ import annotations

from typing import NamedTuple

from toolchain.core.nouns import MemoryFacts, Unknown
from toolchain.core.units import fmt_bytes
from toolchain.probe.parsers.memory import CgroupLimit, Oom, Swap, available_memory, lmk_levels

MiB = 1 << 20
GiB = 1 << 30
# Left for the OS and other processes: the larger of 256 MiB and 5% of RAM.
RESERVE_MIN_BYTES = 256 * MiB
RESERVE_FRACTION = 0.05
# Inside a cgroup limit: 5% of the limit (at least 32 MiB) for the runner's own Python and page cache.
CGROUP_MARGIN_FRACTION = 0.05
CGROUP_MARGIN_MIN_BYTES = 32 * MiB
# Android: lmkd kills cached and background apps as a process grows, so MemAvailable understates
# what it can get; the system's own share (system_server, GPU carve-outs, persistent apps) is not
# visible to the shell user. Half of RAM is the working figure for llama.cpp on phones.
ANDROID_RAM_FRACTION = 0.5
# A 32-bit process addresses 3 GiB; code, stacks and libraries take some of it.
ADDRESS_SPACE_32BIT = 3 * GiB - 256 * MiB


class Limit(NamedTuple):
    bytes: int
    reason: str


def memory_facts(meminfo: dict[str, int], cgroups: list[CgroupLimit], swap: Swap, oom: Oom, props: dict[str, str], *,
                 os_kind: str, userland_bits: int | None, darwin: dict[str, str], unknown: list[Unknown]) -> MemoryFacts:
    total = meminfo.get("MemTotal", 0)
    available, source = available_memory(meminfo)
    if os_kind == "darwin" and not meminfo:
        total, available, source = _darwin_memory(darwin)
    if not total:
        unknown.append(Unknown("memory.total_bytes", "no MemTotal in /proc/meminfo"))
    if available is None:
        unknown.append(Unknown("memory.available_bytes", source))
        available = 0
    reserve = max(RESERVE_MIN_BYTES, int(total * RESERVE_FRACTION))
    reserve_text = f"reserve {fmt_bytes(reserve)} (max(256 MiB, 5% of RAM) for the OS and other processes)"
    limits: list[Limit] = []
    lmk_keep: int | None = None
    if os_kind == "android":
        lmk_keep = _lmk_keep(props, oom)
        ceiling = max(available, int(total * ANDROID_RAM_FRACTION))
        why = (f"Android: max({source} {fmt_bytes(available)}, half of RAM {fmt_bytes(total // 2)}) "
               "(lmkd frees cached apps as a process grows; the system's own share is invisible to the shell user)")
        if lmk_keep:
            why += f" - {fmt_bytes(lmk_keep)} lmkd keeps free at oom_score_adj {oom['oom_score_adj']}"
        limits.append(Limit(ceiling - (lmk_keep or 0) - reserve, f"{why} - {reserve_text}"))
    else:
        limits.append(Limit(available - reserve, f"{source} {fmt_bytes(available)} - {reserve_text}"))
    binding = _binding_cgroup(cgroups)
    if binding is not None and binding["limit_bytes"] is not None:
        limit, usage = binding["limit_bytes"], binding["usage_bytes"] or 0
        margin = max(CGROUP_MARGIN_MIN_BYTES, int(limit * CGROUP_MARGIN_FRACTION))
        limits.append(Limit(limit - usage - margin, f"cgroup {binding['version']} {binding['path']} limit {fmt_bytes(limit)} - "
                                                    f"its usage less page cache {fmt_bytes(usage)} - margin {fmt_bytes(margin)}"))
    if userland_bits == 32:
        limits.append(Limit(ADDRESS_SPACE_32BIT, "32-bit userland: one process addresses 3 GiB, less 256 MiB for code and stacks"))
    tightest = min(limits, key=lambda lim: lim.bytes)
    others = [lim.reason for lim in limits if lim is not tightest]
    reason = f"usable = {tightest.reason}" + (f" (tighter than: {'; '.join(others)})" if others else "")
    # The kernel's own swap counters win; /proc/swaps is the fallback (and lists zram devices).
    swap_total = meminfo.get("SwapTotal", swap["total_bytes"])
    swap_free = meminfo.get("SwapFree", max(0, swap["total_bytes"] - swap["used_bytes"]))
    return MemoryFacts(
        total_bytes=total, available_bytes=available, usable_bytes=max(0, tightest.bytes), reserve_bytes=reserve,
        reserve_reason=reason, available_source=source, swap_total_bytes=swap_total, zram_bytes=swap["zram_bytes"],
        cgroup_limit_bytes=binding["limit_bytes"] if binding else None, swap_free_bytes=swap_free,
        cgroup_usage_bytes=binding["usage_bytes"] if binding else None,
        cgroup_path=f"{binding['version']}:{binding['path']}" if binding else None,
        oom_score_adj=oom["oom_score_adj"], lmk_minfree_bytes=lmk_keep,
    )


def _binding_cgroup(cgroups: list[CgroupLimit]) -> CgroupLimit | None:
    """The limit with the least headroom among the process's cgroup and its ancestors."""
    limited = [c for c in cgroups if c["limit_bytes"] is not None]
    return min(limited, key=lambda c: (c["limit_bytes"] or 0) - (c["usage_bytes"] or 0), default=None)


def _lmk_keep(props: dict[str, str], oom: Oom) -> int | None:
    """Free memory lmkd defends before it kills a process at our oom_score_adj (0: it never picks us)."""
    levels = lmk_levels(props, oom)
    adj = oom["oom_score_adj"]
    if not levels or adj is None:
        return None
    pages = [p for p, level_adj in levels if level_adj <= adj]
    return max(pages, default=0) * (oom["page_size"] or 4096)


def _darwin_memory(darwin: dict[str, str]) -> tuple[int, int | None, str]:
    """macOS: hw.memsize, and free + inactive + speculative + purgeable pages from vm_stat."""
    total = int(darwin["hw.memsize"]) if darwin.get("hw.memsize", "").isdigit() else 0
    page = int(darwin["hw.pagesize"]) if darwin.get("hw.pagesize", "").isdigit() else 16384
    keys = ("Pages free", "Pages inactive", "Pages speculative", "Pages purgeable")
    if not all(darwin.get(k, "").isdigit() for k in keys[:2]):
        return total, None, "vm_stat gave no free/inactive page counts"
    pages = sum(int(darwin[k]) for k in keys if darwin.get(k, "").isdigit())
    return total, pages * page, "vm_stat free+inactive+speculative+purgeable"
