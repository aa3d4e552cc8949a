"""Raw fact outputs -> HostFacts (pure). Unknown values become null with a reason in
HostFacts.unknown; nothing here guesses a value and presents it as measured."""

from __future__ import annotations

from dataclasses import replace

from toolchain.core.nouns import BandwidthFacts, CpuCluster, HostFacts, RuntimeDevice, RuntimeFacts, StorageFacts, ThermalFacts, Unknown
from toolchain.probe.accelerators import accelerators
from toolchain.probe.cpu import cpu_facts
from toolchain.probe.identity import arch_note, board_facts, os_facts
from toolchain.probe.memory import memory_facts
from toolchain.probe.parsers.accel import parse_pmic, parse_tegrastats
from toolchain.probe.parsers.cpu import parse_cpufreq, parse_cpuinfo, parse_nproc
from toolchain.probe.parsers.memory import parse_cgroup, parse_meminfo, parse_oom, parse_swaps
from toolchain.probe.parsers.runtime import (
    backend_names,
    backends_from_system_info,
    llama_devices,
    parse_llama,
    parse_membw,
    parse_runtime,
    parse_storage_read,
)
from toolchain.probe.parsers.storage import parse_storage
from toolchain.probe.parsers.system import parse_darwin, parse_getprop, parse_os_release, parse_uname
from toolchain.probe.parsers.thermal import parse_power, parse_thermal, parse_throttled


def assemble_facts(raw: dict[str, str], *, target: str, deploy_dir: str, elapsed_s: float = 0.0, quick: bool = False,
                   round_trips: int = 1) -> HostFacts:
    unknown: list[Unknown] = []
    uname = parse_uname(raw.get("uname", ""))
    props = parse_getprop(raw.get("getprop", ""))
    darwin = parse_darwin(raw.get("darwin", ""))
    cpuinfo = parse_cpuinfo(raw.get("cpuinfo", ""))
    runtime = runtime_from(raw, quick, unknown)
    board = board_facts(raw, props, darwin, cpuinfo, unknown)
    os = os_facts(raw, uname, parse_os_release(raw.get("os_release", "")), props, darwin, unknown)
    cpu = cpu_facts(cpuinfo, parse_cpufreq(raw.get("cpufreq", "")), parse_nproc(raw.get("nproc", "")), uname["machine"], darwin, unknown)
    os = replace(os, arch_note=arch_note(os, cpu.hardware_64bit, _cpu_name(cpu.clusters, cpu.model_name), runtime.python_bits))
    userland = 32 if os.kernel_bits == 32 else runtime.python_bits or os.userland_bits
    memory = memory_facts(
        parse_meminfo(raw.get("meminfo", "")), parse_cgroup(raw.get("cgroup", "")), parse_swaps(raw.get("swap", "")),
        parse_oom(raw.get("oom", "")), props, os_kind=os.kind, userland_bits=userland, darwin=darwin, unknown=unknown,
    )
    return HostFacts(
        target=target, board=board, os=os, cpu=cpu, memory=memory,
        storage=_storage(raw, deploy_dir, quick, unknown),
        bandwidth=_bandwidth(raw, quick, unknown),
        accelerators=accelerators(raw, props, board.compatible, darwin, quick=quick, unknown=unknown),
        thermal=_thermal(raw, unknown),
        runtime=runtime, unknown=unknown, probe_s=round(elapsed_s, 3), quick=quick, round_trips=round_trips,
    )


def _cpu_name(clusters: list[CpuCluster], model: str | None) -> str | None:
    """ARM cores by name ("Cortex-A72"): a 32-bit kernel's model name says only "ARMv7 Processor"."""
    names = [c.name for c in clusters if c.part and c.part.startswith("0x")]
    return " + ".join(dict.fromkeys(names)) if names else model


def runtime_from(raw: dict[str, str], quick: bool, unknown: list[Unknown]) -> RuntimeFacts:
    data = parse_runtime(raw.get("runtime", ""))
    if data is None:
        unknown.append(Unknown("runtime.python", "python3 did not run on the target"))
        return RuntimeFacts()
    llama = parse_llama(raw.get("llama", "")) if "llama" in raw else None
    libs = data.get("llama_cpp_libs") or []
    backends = sorted({n.split("ggml-", 1)[1].split(".")[0] for n in libs if "ggml-" in n and "ggml-base" not in n})
    version = data.get("llama_cpp")
    checked = "package metadata (not imported: --quick)" if version else ""
    info, offload, error = None, None, None
    devices: list[RuntimeDevice] = []
    if llama is not None and version:
        checked = "imported"
        version = llama.get("version") or version
        info, error, offload = llama.get("system_info"), llama.get("error"), llama.get("gpu_offload")
        if info is not None:
            backends = backends_from_system_info(info) or backends
        devices = llama_devices(llama.get("devices") or [])
        if devices:  # the registry names what loads (system_info also lists a backend with no device)
            backends = backend_names(devices)
        if error:
            unknown.append(Unknown("runtime.llama_cpp_backends", f"llama_cpp is installed but does not import: {error}"))
    elif version and not quick:
        unknown.append(Unknown("runtime.llama_cpp_backends", "llama_cpp import check printed nothing"))
    bits = data.get("bits")
    return RuntimeFacts(
        python=data["python"], python_path=data.get("python_path"), llama_cpp=version, llama_cpp_backends=backends,
        pip=data.get("pip", False), python_bits=bits if bits in (32, 64) else None,
        llama_cpp_checked=checked, llama_cpp_system_info=info, gpu_offload=offload, llama_cpp_error=error,
        llama_cpp_devices=devices,
    )


def _storage(raw: dict[str, str], deploy_dir: str, quick: bool, unknown: list[Unknown]) -> StorageFacts:
    s = parse_storage(raw.get("storage", ""))
    if s["free_bytes"] is None:
        unknown.append(Unknown("storage.free_bytes", "df gave no usable output"))
    if s["kind"] is None:
        unknown.append(Unknown("storage.kind", s["kind_basis"]))
    read = parse_storage_read(raw.get("storage_read", "")) if "storage_read" in raw else None
    speed = read.get("read_bytes_per_s") if read else None
    if "storage_read" not in raw:
        unknown.append(Unknown("storage.read_bytes_per_s", "not measured (--quick)" if quick else "the read test did not run"))
    elif speed is None:
        why = (read.get("error") if read else None) or "the read test printed nothing (no python3, and no large file for dd)"
        unknown.append(Unknown("storage.read_bytes_per_s", why))
    test_bytes = read.get("bytes") if read else None
    return StorageFacts(
        path=deploy_dir, free_bytes=s["free_bytes"], read_bytes_per_s=float(speed) if speed is not None else None,
        fs_type=s["fs_type"], device=s["device"], kind=s["kind"], read_method=(read.get("method") or "not measured") if read else "not measured",
        mount=s["mount"], disk=s["disk"], kind_basis=s["kind_basis"],
        model=s["attrs"].get("device/model") or s["attrs"].get("device/name"),
        read_test_bytes=test_bytes if test_bytes is not None and speed else None,
    )


def _bandwidth(raw: dict[str, str], quick: bool, unknown: list[Unknown]) -> BandwidthFacts:
    data = parse_membw(raw.get("membw", "")) if "membw" in raw else None
    if data is None:
        why = "not measured (--quick)" if quick else "the read test did not run (python3 missing on the target?)"
        unknown.append(Unknown("bandwidth", why))
        return BandwidthFacts()
    return BandwidthFacts(
        read_bytes_per_s=float(data["read_bytes_per_s"]), read_1t_bytes_per_s=float(data["read_1t_bytes_per_s"]),
        threads=data["threads"], method=data.get("method", ""), buffer_bytes=data.get("buffer_bytes"),
        cpu_ids=data.get("cpu_ids", []),
    )


def _thermal(raw: dict[str, str], unknown: list[Unknown]) -> ThermalFacts:
    temps = parse_thermal(raw.get("thermal", ""))
    stats = parse_tegrastats(raw.get("tegrastats", ""))
    if not temps:
        temps = stats["temperatures_c"]
    if not temps:
        unknown.append(Unknown("thermal.temperatures_c", "no readable thermal zone"))
    throttled = parse_throttled(raw.get("throttled", ""))
    sensors = parse_power(raw.get("power", ""))
    pmic = parse_pmic(raw.get("pmic", ""))
    if pmic:
        sensors.append(f"vcgencmd pmic_read_adc ({len(pmic)} readings)")
    sensors += [f"tegrastats {rail}" for rail in stats["rails_mw"]]
    power = {rail: mw / 1000.0 for rail, mw in stats["rails_mw"].items()}
    for name, amps in pmic.items():  # the Pi 5 PMIC reports each rail's current and voltage apart
        if name.endswith("_A") and f"{name[:-2]}_V" in pmic:
            power[name[:-2]] = round(amps * pmic[f"{name[:-2]}_V"], 3)
    return ThermalFacts(temperatures_c=temps, throttled=throttled["raw"], power_sensors=sensors,
                        throttled_flags=throttled["flags"], throttled_now=throttled["now"], power_w=power)
