"""Recorded outputs -> HostFacts: the board cases the issue names, assembled from the fixtures."""

from __future__ import annotations

import pytest

from tests.unit.test_probe_support import board_raw, output
from toolchain.cli.render_facts import render_facts, summary_line
from toolchain.core.nouns import HostFacts
from toolchain.probe.assemble import assemble_facts
from toolchain.probe.memory import ADDRESS_SPACE_32BIT

GiB = 1 << 30
MiB = 1 << 20


def facts(raw: dict[str, str], *, quick: bool = True) -> HostFacts:
    f = assemble_facts(raw, target="t", deploy_dir="/d", quick=quick)
    render_facts(f)  # the human view renders every case
    assert "\n" not in summary_line(f)
    return f


def reasons(f: HostFacts) -> str:
    return " ".join(f"{u.fact}: {u.reason}" for u in f.unknown)


def test_pi4_with_32bit_kernel_on_64bit_hardware() -> None:
    f = facts(board_raw("rpi4-32bit"))
    assert (f.os.arch, f.os.kernel_bits, f.cpu.hardware_64bit) == ("armv7l", 32, True)
    assert f.os.arch_note and "64-bit hardware" in f.os.arch_note and "Cortex-A72" in f.os.arch_note
    assert f.board.model == "Raspberry Pi 4 Model B Rev 1.4" and f.board.nominal_ram_bytes == 4 * GiB  # revision c03114
    assert f.board.soc == "bcm2711" and f.board.compatible == ["raspberrypi,4-model-b", "brcm,bcm2711"]
    assert f.cpu.cores == 4 and f.cpu.recommended_threads == 4 and f.cpu.isa == ["neon"]
    assert f.memory.usable_bytes == ADDRESS_SPACE_32BIT < f.memory.available_bytes
    assert "32-bit userland" in f.memory.reserve_reason
    assert f.thermal.throttled == "0x0" and f.thermal.throttled_now is False
    assert "32-bit software on 64-bit hardware" in summary_line(f)


def test_pi4_64bit_is_not_flagged() -> None:
    f = facts(board_raw("rpi4-4gb"))
    assert f.os.arch == "aarch64" and f.os.arch_note is None and f.cpu.hardware_64bit
    assert f.board.model == "Raspberry Pi 4 Model B Rev 1.5" and f.board.revision == "c03115"
    assert f.memory.total_bytes == 3833280 * 1024 and f.memory.available_source == "MemAvailable"
    assert f.memory.usable_bytes == f.memory.available_bytes - 256 * MiB


def test_old_kernel_without_memavailable() -> None:
    raw = board_raw("old-kernel")
    assert "MemAvailable" not in raw["meminfo"]
    f = facts(raw)
    assert "lacks MemAvailable" in f.memory.available_source
    assert 0 < f.memory.usable_bytes < f.memory.available_bytes < f.memory.total_bytes
    assert f.os.kernel == "3.10.108" and f.board.soc == "BCM2711"  # no device tree: cpuinfo's Hardware line


def test_jetson_nvidia_smi_memory_not_supported() -> None:
    raw = board_raw("jetson-orin-nano") | {"nvidia_smi": output("nvidia_smi", "jetson-orin-nano-super-table")}
    f = facts(raw)
    (gpu,) = f.accelerators
    assert gpu.kind == "nvidia-gpu" and gpu.llama_cpp_backend == "cuda" and gpu.shared_memory
    assert gpu.memory_bytes is None and "Not Supported" in gpu.note
    assert f.board.soc == "tegra234" and f.cpu.recommended_threads == 6
    assert f.memory.total_bytes > 7 * GiB
    assert f.thermal.power_w == {"VDD_IN": 17.946, "VDD_CPU_GPU_CV": 8.896, "VDD_SOC": 3.923}
    assert "tegrastats VDD_IN" in f.thermal.power_sensors


def test_jetson_without_nvidia_smi_still_has_its_gpu() -> None:
    raw = {"dt_compatible": output("dt_compatible", "jetson-orin-nano-sbc-bench"), "tegra_release": output("tegra_release", "jetpack6-r36.4")}
    f = facts(raw)
    assert f.board.jetson_l4t == "R36.4.0"
    assert [(a.kind, a.llama_cpp_backend, a.shared_memory) for a in f.accelerators] == [("nvidia-gpu", "cuda", True)]


def test_phone_getprop_brackets() -> None:
    f = facts(board_raw("pixel8"))
    assert f.os.kind == "android" and f.os.libc == "bionic" and f.os.distribution == "Android 14 (SDK 34)"
    assert (f.board.model, f.board.android_model, f.board.soc, f.board.android_platform) == ("Pixel 8", "Pixel 8", "Google Tensor G3", "zuma")
    # Tensor G3: 1x Cortex-X3 + 4x Cortex-A715 decode; the 4 Cortex-A510 are left out.
    assert f.cpu.cores == 9 and f.cpu.recommended_threads == 5 and f.cpu.decode_cpu_ids == [4, 5, 6, 7, 8]
    assert [c.name for c in f.cpu.clusters if c.little] == ["Cortex-A510"]
    assert {"sve", "sve2", "i8mm", "dotprod"} <= set(f.cpu.isa)
    # lmkd frees cached apps: more than MemAvailable counts, and the basis says so
    assert f.memory.usable_bytes > f.memory.available_bytes - f.memory.reserve_bytes
    assert f.memory.reserve_reason.startswith("usable = Android")


def test_android_low_memory_killer_levels() -> None:
    raw = board_raw("pixel8") | {"oom": output("oom", "android-8-kernel-lmk")}
    f = facts(raw)
    assert f.memory.oom_score_adj == 0 and f.memory.lmk_minfree_bytes == 18432 * 4096
    base = facts(board_raw("pixel8"))
    assert base.memory.usable_bytes - f.memory.usable_bytes == 18432 * 4096
    assert "lmkd keeps free at oom_score_adj 0" in f.memory.reserve_reason
    # lmkd's own property wins over the kernel driver's parameters
    raw["getprop"] += "\n[sys.lmk.minfree_levels]: [18432:0,23040:100,27648:200,85296:250,55296:900,80640:950]\n"
    assert facts(raw).memory.lmk_minfree_bytes == 18432 * 4096


def test_cgroup_limit_binds() -> None:
    raw = board_raw("rpi4-4gb") | {"cgroup": output("cgroup", "rpi4-4gb-cgroup-2gib")}
    f = facts(raw)
    assert f.memory.cgroup_limit_bytes == 2 * GiB and f.memory.cgroup_path and f.memory.cgroup_path.startswith("v1:/edgedeploy-")
    assert f.memory.usable_bytes < 2 * GiB - (f.memory.cgroup_usage_bytes or 0)
    assert "cgroup v1" in f.memory.reserve_reason.split("(tighter")[0]
    v2 = facts(board_raw("rpi4-4gb") | {"cgroup": output("cgroup", "systemd-user-slice-v2")})
    assert v2.memory.cgroup_limit_bytes == 6 * GiB and v2.memory.cgroup_path == "v2:/user.slice"
    # 6 GiB on user.slice is a limit, but MemAvailable on a 3.7 GiB board is tighter
    assert v2.memory.reserve_reason.startswith("usable = MemAvailable") and "cgroup v2 /user.slice" in v2.memory.reserve_reason
    assert facts(board_raw("rpi4-4gb") | {"cgroup": output("cgroup", "x86-64-vm")}).memory.cgroup_limit_bytes is None


def test_big_little_clusters() -> None:
    f = facts(board_raw("orangepi5"))
    assert [(c.name, c.cores, c.max_mhz, c.little) for c in f.cpu.clusters] == [("Cortex-A76", 4, 2400.0, False), ("Cortex-A55", 4, 1800.0, True)]
    assert f.cpu.recommended_threads == 4 and f.cpu.decode_cpu_ids == [4, 5, 6, 7]
    assert "left out" in f.cpu.threads_basis and "dotprod" in f.cpu.isa


def test_intel_hybrid_leaves_e_cores_out() -> None:
    f = facts({"cpufreq": output("cpufreq", "intel-hybrid-alder-lake"), "uname": "Linux 6.8.0 x86_64\n64"})
    assert f.cpu.cores == 16 and f.cpu.recommended_threads == 8 and f.cpu.decode_cpu_ids == list(range(8))
    assert [c.little for c in f.cpu.clusters] == [False, True]


def test_smt_siblings_count_once() -> None:
    cpuinfo = "".join(f"processor\t: {i}\nmodel name\t: Intel(R) Core(TM) i5-8250U\nphysical id\t: 0\ncore id\t\t: {i % 4}\nflags\t\t: fpu lm avx2 fma f16c\n\n"
                      for i in range(8))
    f = facts({"cpuinfo": cpuinfo, "nproc": "8"})
    assert f.cpu.recommended_threads == 4 and "SMT" in f.cpu.threads_basis and f.cpu.hardware_64bit


@pytest.mark.parametrize(("case", "kind", "name", "backend"), [
    ("rk3588-mali-kbase", "mali", "Mali-G610", "vulkan"),
    ("pi5-v3d", "gpu", "Broadcom VideoCore (v3d)", "vulkan"),
    ("snapdragon-adreno-kgsl", "adreno", "Adreno740v2", "opencl"),
])
def test_gpus_and_their_backends(case: str, kind: str, name: str, backend: str) -> None:
    f = facts({"gpu": output("gpu", case), "vulkan_icd": output("vulkan_icd", "pi-os-bookworm")})
    assert [(a.kind, a.name, a.llama_cpp_backend) for a in f.accelerators] == [(kind, name, backend)]


def test_npus_are_not_llama_backends() -> None:
    names = []
    for case in ("rk3588-rknpu", "pi5-hailo-and-coral-usb", "intel-core-ultra"):
        f = facts({"npu": output("npu", case)})
        assert all(a.kind == "npu" and a.llama_cpp_backend == "not usable by llama.cpp" for a in f.accelerators)
        names += [a.name for a in f.accelerators]
    assert names == ["Rockchip RKNPU", "Hailo NPU", "Coral USB Accelerator", "Intel NPU"]


def test_vulkan_devices_only_after_vulkaninfo() -> None:
    quick = facts({"vulkan_icd": output("vulkan_icd", "pi-os-bookworm")})
    assert not quick.accelerators and "vulkaninfo not run" in reasons(quick)
    full = facts({"vulkaninfo": output("vulkaninfo", "pi5-v3dv-and-llvmpipe")}, quick=False)
    assert [(a.name, a.llama_cpp_backend) for a in full.accelerators] == [
        ("V3D 7.1.7", "vulkan"), ("llvmpipe (LLVM 15.0.6, 128 bits)", "not usable by llama.cpp")]


def test_macos() -> None:
    raw = {"uname": output("uname", "macos-apple-silicon"), "darwin": output("darwin", "macbook-air-m2")}
    f = facts(raw)
    assert (f.os.kind, f.os.distribution, f.os.libc, f.board.mac_model) == ("darwin", "macOS 14.5", "libSystem", "Mac14,2")
    assert f.memory.total_bytes == 16 * GiB and f.memory.available_bytes == (40312 + 339148 + 6109 + 11427) * 16384
    assert f.cpu.cores == 8 and {"neon", "dotprod", "i8mm", "bf16"} <= set(f.cpu.isa)
    assert [(a.name, a.llama_cpp_backend) for a in f.accelerators] == [("Apple M2 GPU", "metal")]
    full = facts(raw | {"system_profiler": output("system_profiler", "macbook-air-m2")}, quick=False)
    assert full.accelerators[0].note == "10 cores, Metal 3"


def test_runtime_quick_and_imported() -> None:
    quick = facts({"runtime": output("runtime", "jetson-cuda-wheel")})
    assert quick.runtime.llama_cpp == "0.3.16" and quick.runtime.llama_cpp_backends == ["cpu", "cuda"]
    assert quick.runtime.llama_cpp_checked.startswith("package metadata")
    full = facts({"runtime": output("runtime", "jetson-cuda-wheel"), "llama": output("llama", "jetson-cuda")}, quick=False)
    assert full.runtime.llama_cpp_checked == "imported" and full.runtime.gpu_offload is True
    assert full.runtime.llama_cpp_backends == ["cuda", "cpu"]
    missing = facts({"runtime": output("runtime", "rpi4-4gb"), "llama": output("llama", "rpi4-4gb")}, quick=False)
    assert missing.runtime.llama_cpp is None and missing.runtime.python
    pi32 = facts({"runtime": output("runtime", "pi-32bit-userland"), "uname": "Linux 6.1.21-v8+ aarch64\n32",
                  "meminfo": "MemTotal: 8000000 kB\nMemAvailable: 7000000 kB"})
    assert pi32.os.arch_note and "32-bit userland" in pi32.os.arch_note and pi32.memory.usable_bytes == ADDRESS_SPACE_32BIT


def test_measurements() -> None:
    f = facts({"membw": output("membw", "x86-64-vm"), "storage_read": output("storage_read", "dd-gnu-no-python"),
               "storage": output("storage", "pi4-sd-card")}, quick=False)
    assert f.bandwidth.read_bytes_per_s and f.bandwidth.threads == 2 and "memchr" in f.bandwidth.method
    assert f.storage.kind == "sd" and f.storage.read_bytes_per_s and round(f.storage.read_bytes_per_s / 1e6) == 45
    assert "dd" in f.storage.read_method
    quick = facts({"storage": output("storage", "pi4-sd-card")})
    assert quick.bandwidth.read_bytes_per_s is None and "bandwidth: not measured (--quick)" in reasons(quick)


def test_thermal_and_power() -> None:
    f = facts({"thermal": output("thermal", "jetson-orin-zones"), "throttled": output("throttled", "pi-under-voltage"),
               "pmic": output("pmic", "pi5-pmic-read-adc"), "power": output("power", "jetson-ina3221")})
    assert f.thermal.temperatures_c["tj-thermal"] == 48.2 and f.thermal.throttled_now is True
    assert "under-voltage occurred" in f.thermal.throttled_flags
    assert f.thermal.power_w["VDD_CORE"] == round(0.770951 * 0.8790252, 3)
    assert "hwmon ina3221 curr1 (VDD_IN)" in f.thermal.power_sensors


def test_json_contract_keys() -> None:
    from toolchain.core.serde import to_json_dict

    doc = to_json_dict(facts(board_raw("rpi4-4gb")))
    for path in ("target", "board.model", "os.kind", "os.kernel", "cpu.arch", "cpu.cores", "cpu.features", "memory.total_bytes",
                 "memory.available_bytes", "memory.usable_bytes", "storage.free_bytes", "storage.read_bytes_per_s",
                 "accelerators", "runtime.python", "runtime.llama_cpp"):
        node = doc
        for key in path.split("."):
            assert key in node, path
            node = node[key]
