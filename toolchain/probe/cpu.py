"""CpuFacts from the parsed facts (pure): clusters, decode threads, ISA, 64-bit capability."""

from __future__ import annotations

from toolchain.core.nouns import CpuCluster, CpuFacts, Unknown
from toolchain.probe.parsers.cpu import CpuFreq, CpuInfo, arm_part, isa_names, llama_features, parse_nproc

# A cluster clocked below this share of the fastest one is an efficiency cluster when its part is unknown.
LITTLE_FREQ_RATIO = 0.75
LITTLE_CAPACITY_RATIO = 0.5


def cpu_facts(info: CpuInfo, freq: CpuFreq, nproc: int | None, machine: str | None, darwin: dict[str, str],
              unknown: list[Unknown]) -> CpuFacts:
    cores = nproc or len(freq["online"]) or info["count"] or parse_nproc(darwin.get("hw.ncpu", "")) or 0
    if not cores:
        unknown.append(Unknown("cpu.cores", "neither nproc, /sys/devices/system/cpu/online nor /proc/cpuinfo gave a count"))
        cores = 1
    flags = info["features"] or _darwin_flags(darwin)
    clusters = make_clusters(info, freq, cores)
    if clusters and not any(c.max_mhz for c in clusters) and info["count"]:
        unknown.append(Unknown("cpu.clusters.max_mhz", "cpufreq not readable: clusters from CPU part names only"))
    decode_ids, basis = decode_cores(clusters, info["cores"])
    model = info["model_name"] or darwin.get("machdep.cpu.brand_string")
    return CpuFacts(
        arch=machine, cores=cores, features=llama_features(flags), model_name=model, clusters=clusters,
        # nproc counts the cores this user may run on (affinity, cpuset); cpuinfo may list more.
        recommended_threads=max(1, min(cores, len(decode_ids) if decode_ids else _fallback_threads(clusters, cores))),
        isa=isa_names(flags), hardware_64bit=hardware_64bit(info, machine, flags), decode_cpu_ids=decode_ids,
        threads_basis=basis,
    )


def _darwin_flags(darwin: dict[str, str]) -> list[str]:
    """macOS sysctl hw.optional.* -> the kernel flag names the rest of the code knows."""
    names = {"hw.optional.AdvSIMD": "asimd", "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
             "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme", "hw.optional.avx2_0": "avx2",
             "hw.optional.avx512f": "avx512f"}
    return sorted(flag for key, flag in names.items() if darwin.get(key) == "1")


def make_clusters(info: CpuInfo, freq: CpuFreq, cores: int) -> list[CpuCluster]:
    """Cores grouped by (max frequency, part, capacity); fastest first."""
    ids = sorted(set(info["parts"]) | set(freq["max_mhz"]) | set(freq["capacity"]) | set(freq["online"]))
    if not ids:
        ids = list(range(cores))
    # A signal known for only some cores (a partial sysfs) would split one cluster in two: use it
    # only when every core has it.
    mhz_of = freq["max_mhz"] if set(ids) <= set(freq["max_mhz"]) else {}
    cap_of = freq["capacity"] if set(ids) <= set(freq["capacity"]) else {}
    groups: dict[tuple[float, str, int], list[int]] = {}
    for cpu in ids:
        key = (mhz_of.get(cpu, 0.0), info["parts"].get(cpu, ""), cap_of.get(cpu, 0))
        groups.setdefault(key, []).append(cpu)
    atom = set(freq["atom"])
    top_mhz = max((k[0] for k in groups), default=0.0)
    top_cap = max((k[2] for k in groups), default=0)
    clusters = []
    for (mhz, part, cap), cpus in sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][2], kv[0][1])):
        implementer = next((info["implementers"][c] for c in cpus if c in info["implementers"]), None)
        known = arm_part(implementer, part) if part.startswith("0x") else None
        if known is not None:
            little = known.little
        elif atom:
            little = set(cpus) <= atom
        else:
            little = bool((mhz and top_mhz and mhz < LITTLE_FREQ_RATIO * top_mhz) or (cap and top_cap and cap < LITTLE_CAPACITY_RATIO * top_cap))
        name = known.name if known else (("E-core " if little and atom else "") + part if part else f"{mhz:.0f} MHz cores" if mhz else "cores")
        clusters.append(CpuCluster(name=name, cores=len(cpus), cpu_ids=cpus, max_mhz=mhz or None, part=part or None,
                                   capacity=cap or None, little=little and len(groups) > 1))
    return clusters


def decode_cores(clusters: list[CpuCluster], core_keys: dict[int, str]) -> tuple[list[int], str]:
    """The cores llama.cpp's decode should use: every non-little core, one per physical core.

    Decode is barrier-synchronised per layer, so a slow core holds every other thread up; SMT
    siblings share one core's load/store units and add little to a bandwidth-bound loop."""
    big = [c for c in clusters if not c.little] or clusters
    ids: list[int] = []
    seen: set[str] = set()
    for cluster in big:
        for cpu in cluster.cpu_ids:
            key = core_keys.get(cpu)
            if key is None or key not in seen:
                ids.append(cpu)
                if key is not None:
                    seen.add(key)
    parts = " + ".join(f"{c.cores}x {c.name}" for c in big)
    left = [c for c in clusters if c not in big]
    basis = f"{len(ids)} decode threads: {parts}"
    if left:
        basis += "; left out (efficiency cores): " + " + ".join(f"{c.cores}x {c.name}" for c in left)
    if seen and len(ids) < sum(c.cores for c in big):
        basis += "; one thread per physical core (SMT siblings left out)"
    return sorted(ids), basis


def _fallback_threads(clusters: list[CpuCluster], cores: int) -> int:
    return sum(c.cores for c in clusters if not c.little) or cores


def hardware_64bit(info: CpuInfo, machine: str | None, flags: list[str]) -> bool | None:
    """Can the CPU run 64-bit code, whatever the kernel is? (A Pi 4 under an armv7l kernel can.)"""
    if machine in ("aarch64", "arm64", "x86_64", "amd64", "riscv64"):
        return True
    if "lm" in flags:  # x86 long mode
        return True
    parts = [arm_part(info["implementers"].get(cpu), part) for cpu, part in info["parts"].items() if part.startswith("0x")]
    known = [p for p in parts if p is not None]
    if known:
        return any(p.v8 for p in known)
    if info["architecture"] and info["architecture"].isdigit():
        return int(info["architecture"]) >= 8
    return None
