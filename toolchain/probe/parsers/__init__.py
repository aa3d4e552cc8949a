"""Pure parsers: raw command output in, plain data out. Each is pinned by recorded real outputs
(tests/fixtures/probe/<fact>/*.yaml). Unknown or unparseable input yields empty/None values,
never an exception (tests feed every parser garbage)."""

from __future__ import annotations

from collections.abc import Callable

from toolchain.probe.parsers.accel import (
    parse_gpu_sysfs,
    parse_npu,
    parse_nvidia_smi,
    parse_pmic,
    parse_system_profiler,
    parse_tegrastats,
    parse_vulkan_icds,
    parse_vulkaninfo,
)
from toolchain.probe.parsers.cpu import parse_cpufreq, parse_cpuinfo, parse_nproc
from toolchain.probe.parsers.memory import parse_cgroup, parse_meminfo, parse_oom, parse_swaps
from toolchain.probe.parsers.runtime import parse_llama, parse_membw, parse_runtime, parse_storage_read
from toolchain.probe.parsers.storage import parse_storage
from toolchain.probe.parsers.system import (
    parse_darwin,
    parse_dmi,
    parse_dt_compatible,
    parse_dt_model,
    parse_getprop,
    parse_libc,
    parse_nv_tegra_release,
    parse_os_release,
    parse_uname,
)
from toolchain.probe.parsers.thermal import parse_power, parse_thermal, parse_throttled

# fact name (commands.py) -> its parser. The fixture directory of a fact is named after it. Each
# returns its own type; this table only feeds recordings and tests, which serialise the result.
PARSERS: dict[str, Callable[[str], object]] = {
    "uname": parse_uname,
    "os_release": parse_os_release,
    "libc": parse_libc,
    "meminfo": parse_meminfo,
    "cpuinfo": parse_cpuinfo,
    "cpufreq": parse_cpufreq,
    "nproc": parse_nproc,
    "storage": parse_storage,
    "dt_model": parse_dt_model,
    "dt_compatible": parse_dt_compatible,
    "dmi": parse_dmi,
    "getprop": parse_getprop,
    "darwin": parse_darwin,
    "cgroup": parse_cgroup,
    "swap": parse_swaps,
    "oom": parse_oom,
    "nvidia_smi": parse_nvidia_smi,
    "tegra_release": parse_nv_tegra_release,
    "tegrastats": parse_tegrastats,
    "vulkan_icd": parse_vulkan_icds,
    "gpu": parse_gpu_sysfs,
    "npu": parse_npu,
    "thermal": parse_thermal,
    "throttled": parse_throttled,
    "power": parse_power,
    "pmic": parse_pmic,
    "runtime": parse_runtime,
    "vulkaninfo": parse_vulkaninfo,
    "llama": parse_llama,
    "membw": parse_membw,
    "storage_read": parse_storage_read,
    "system_profiler": parse_system_profiler,
}

__all__ = ["PARSERS"]
