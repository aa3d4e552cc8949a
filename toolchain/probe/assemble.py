"""Raw fact outputs -> HostFacts (pure). Unknown values become null with a reason."""

from __future__ import annotations

from typing import Any

from toolchain.models import (
    BandwidthFacts,
    BoardFacts,
    CpuCluster,
    CpuFacts,
    HostFacts,
    MemoryFacts,
    OsFacts,
    RuntimeFacts,
    StorageFacts,
    Unknown,
)
from toolchain.probe import parsers as p

MiB = 1 << 20
# Left for the OS and other processes: the larger of 256 MiB and 5% of RAM.
RESERVE_MIN_BYTES = 256 * MiB
RESERVE_FRACTION = 0.05
# Android's low-memory killer takes a foreground app well before RAM is exhausted; in practice a
# process rarely keeps more than about half of total RAM on phones.
ANDROID_LMK_FRACTION = 0.5


def assemble_facts(raw: dict[str, str], *, target: str, deploy_dir: str, elapsed_s: float = 0.0) -> HostFacts:
    unknown: list[Unknown] = []
    uname = p.parse_uname(raw.get("uname", ""))
    props = p.parse_getprop(raw.get("getprop", ""))
    osr = p.parse_os_release(raw.get("os_release", ""))
    os_kind = "android" if props.get("ro.build.version.release") else (uname["system"] or "unknown").lower()
    cpu = _cpu(raw, uname.get("machine"), unknown)
    memory = _memory(raw, os_kind, unknown)
    runtime_raw = p.parse_json_line(raw.get("runtime", "")) or {}
    if not runtime_raw:
        unknown.append(Unknown("runtime.python", "python3 did not run on the target"))
    bw_raw = p.parse_json_line(raw.get("membw", "")) if "membw" in raw else None
    if bw_raw is None:
        unknown.append(Unknown("bandwidth", "not measured (--quick, or python3 missing on the target)"))
    df = p.parse_df(raw.get("df", ""))
    if df is None:
        unknown.append(Unknown("storage.free_bytes", "df gave no usable output"))
    board = BoardFacts(
        model=(raw.get("dt_model") or "").strip() or props.get("ro.product.model") or None,
        android_model=props.get("ro.product.model"),
        android_soc=props.get("ro.soc.model"),
        android_platform=props.get("ro.board.platform"),
    )
    distribution = osr.get("PRETTY_NAME") or (f"Android {props['ro.build.version.release']}" if os_kind == "android" else None)
    return HostFacts(
        target=target,
        board=board,
        os=OsFacts(kind=os_kind, kernel=uname["kernel"], distribution=distribution, arch=uname["machine"],
                   libc="bionic" if os_kind == "android" else None),
        cpu=cpu,
        memory=memory,
        storage=StorageFacts(path=deploy_dir, free_bytes=df["free_bytes"] if df else None,
                             device=df["device"] if df else None),
        bandwidth=_bandwidth(bw_raw),
        runtime=RuntimeFacts(
            python=runtime_raw.get("python"), python_path=runtime_raw.get("python_path"),
            llama_cpp=runtime_raw.get("llama_cpp"), llama_cpp_backends=list(runtime_raw.get("backends") or []),
            pip=bool(runtime_raw.get("pip")),
        ),
        unknown=unknown,
        probe_s=round(elapsed_s, 3),
    )


def _cpu(raw: dict[str, str], machine: str | None, unknown: list[Unknown]) -> CpuFacts:
    info = p.parse_cpuinfo(raw.get("cpuinfo", ""))
    nproc_text = raw.get("nproc", "").strip()
    cores = int(nproc_text) if nproc_text.isdigit() else info["count"]
    if not cores:
        unknown.append(Unknown("cpu.cores", "neither nproc nor /proc/cpuinfo gave a count"))
        cores = 1
    clusters = [CpuCluster(**c) for c in p.clusters_from(info["parts"], p.parse_max_freq(raw.get("cpu_max_freq", "")))]
    return CpuFacts(
        arch=machine, cores=cores, features=p.llama_features(info["features"]), model_name=info["model_name"],
        clusters=clusters, recommended_threads=recommended_threads(clusters, cores),
    )


def recommended_threads(clusters: list[CpuCluster], cores: int) -> int:
    """Decode threads = the big cores. Little cores drag llama.cpp's barrier-synchronised decode."""
    freqs = [c.max_mhz for c in clusters if c.max_mhz]
    if len(clusters) > 1 and freqs:
        top = max(freqs)
        return sum(c.cores for c in clusters if (c.max_mhz or 0) >= 0.9 * top) or cores
    return cores


def _memory(raw: dict[str, str], os_kind: str, unknown: list[Unknown]) -> MemoryFacts:
    info = p.parse_meminfo(raw.get("meminfo", ""))
    total = info.get("MemTotal", 0)
    available, source = p.available_memory(info)
    if available is None:
        unknown.append(Unknown("memory.available_bytes", source))
        available = 0
    cgroup = p.parse_cgroup_limit(raw.get("cgroup_memory", ""))
    reserve = max(RESERVE_MIN_BYTES, int(total * RESERVE_FRACTION))
    reason = f"max(256 MiB, 5% of {total // MiB} MiB RAM) left for the OS"
    ceiling = available
    if cgroup is not None and cgroup < ceiling:
        ceiling, reason = cgroup, reason + f"; cgroup limit {cgroup // MiB} MiB applies"
    if os_kind == "android":
        lmk = int(total * ANDROID_LMK_FRACTION)
        if lmk < ceiling:
            ceiling, reason = lmk, reason + "; Android low-memory killer: about half of RAM per app"
    return MemoryFacts(
        total_bytes=total, available_bytes=available, usable_bytes=max(0, ceiling - reserve), reserve_bytes=reserve,
        reserve_reason=reason, available_source=source, swap_total_bytes=info.get("SwapTotal", 0),
        cgroup_limit_bytes=cgroup,
    )


def _bandwidth(data: dict[str, Any] | None) -> BandwidthFacts:
    if not data:
        return BandwidthFacts()
    return BandwidthFacts(
        read_bytes_per_s=float(data["read_bytes_per_s"]), read_1t_bytes_per_s=float(data["read_1t_bytes_per_s"]),
        threads=int(data["threads"]), method=str(data.get("method", "")),
    )
