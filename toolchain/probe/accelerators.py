"""Accelerators (pure): every GPU/NPU the facts show, and which llama.cpp backend can use it."""

from __future__ import annotations

import re

from toolchain.core.nouns import Accelerator, Unknown
from toolchain.probe.parsers.accel import (
    parse_gpu_sysfs,
    parse_npu,
    parse_nvidia_smi,
    parse_system_profiler,
    parse_tegrastats,
    parse_vulkan_icds,
    parse_vulkaninfo,
    usb_accelerator_name,
)

NOT_USABLE = "not usable by llama.cpp"

# DRM driver -> (kind, name, llama.cpp backend, note). Display-only drivers are absent.
_DRM = {
    "v3d": ("gpu", "Broadcom VideoCore (v3d)", "vulkan", "Mesa v3dv Vulkan; slower than the CPU for LLM decode on a Pi"),
    "panfrost": ("mali", "Arm Mali (panfrost)", "vulkan", "Mesa panvk Vulkan; coverage of llama.cpp's shaders varies"),
    "panthor": ("mali", "Arm Mali (panthor)", "vulkan", "Mesa panvk Vulkan"),
    "mali": ("mali", "Arm Mali (kbase)", "vulkan", "vendor driver; Vulkan or OpenCL from the vendor's libmali"),
    "msm": ("adreno", "Qualcomm Adreno (msm)", "opencl", "llama.cpp's OpenCL backend targets Adreno; Vulkan via Mesa turnip"),
    "i915": ("gpu", "Intel GPU (i915)", "vulkan", "also SYCL with oneAPI"),
    "xe": ("gpu", "Intel GPU (xe)", "vulkan", "also SYCL with oneAPI"),
    "amdgpu": ("gpu", "AMD GPU (amdgpu)", "vulkan", "also HIP with ROCm"),
    "nouveau": ("nvidia-gpu", "NVIDIA GPU (nouveau)", "vulkan", "CUDA needs NVIDIA's driver"),
    "nvidia": ("nvidia-gpu", "NVIDIA GPU", "cuda", ""),
    "rknpu": ("npu", "Rockchip RKNPU", NOT_USABLE, "runs RKNN models (rknn-llm), not GGUF"),
}
_JETSON_COMPAT = re.compile(r"^nvidia,(tegra\d+|p\d{4})")


def accelerators(raw: dict[str, str], props: dict[str, str], compatible: list[str], darwin: dict[str, str], *,
                 quick: bool, unknown: list[Unknown]) -> list[Accelerator]:
    out: list[Accelerator] = []
    jetson = bool(raw.get("tegra_release", "").strip()) or any(_JETSON_COMPAT.match(c) for c in compatible)
    out += _nvidia(raw, jetson)
    out += _sysfs_gpus(raw, props, has_nvidia=bool(out))
    out += _vulkan(raw, quick, unknown)  # a GPU seen in sysfs appears again under its Vulkan name
    out += _apple(raw, darwin)
    out += _npus(raw, props)
    return out


def _nvidia(raw: dict[str, str], jetson: bool) -> list[Accelerator]:
    out: list[Accelerator] = []
    for gpu in parse_nvidia_smi(raw.get("nvidia_smi", "")):
        shared = jetson or "nvgpu" in gpu["name"]
        out.append(Accelerator(
            kind="nvidia-gpu", name=gpu["name"], memory_bytes=None if shared else gpu["memory_bytes"], shared_memory=shared,
            llama_cpp_backend="cuda", driver="nvidia", source="nvidia-smi --query-gpu",
            note=(f"integrated: shares RAM with the CPU (nvidia-smi memory: {gpu['memory_note'] or 'reported'}); see memory"
                  if shared else (f"memory: {gpu['memory_note']}" if gpu["memory_note"] else "")),
        ))
    if jetson and not out:  # JetPack 5 and older have no nvidia-smi
        stats = parse_tegrastats(raw.get("tegrastats", ""))
        clock = f", GPU clock {stats['gpu_mhz']} MHz" if stats["gpu_mhz"] else ""
        out.append(Accelerator(kind="nvidia-gpu", name="NVIDIA Jetson integrated GPU", shared_memory=True, llama_cpp_backend="cuda",
                               driver="nvgpu", source="/etc/nv_tegra_release or device tree",
                               note=f"shares RAM with the CPU{clock}"))
    return out


def _sysfs_gpus(raw: dict[str, str], props: dict[str, str], *, has_nvidia: bool) -> list[Accelerator]:
    gpu = parse_gpu_sysfs(raw.get("gpu", ""))
    icds = parse_vulkan_icds(raw.get("vulkan_icd", ""))
    out: list[Accelerator] = []
    seen: set[str] = set()
    for card in gpu["drm"]:
        driver = card.get("driver", "")
        if driver not in _DRM or driver in seen or (driver == "nvidia" and has_nvidia):
            continue
        seen.add(driver)
        kind, name, backend, note = _DRM[driver]
        if backend == "vulkan":
            note = f"{note}; Vulkan drivers installed: {', '.join(icds) or 'none'}"
        out.append(Accelerator(kind=kind, name=name, shared_memory=kind != "gpu" or driver in ("v3d", "i915", "xe"),
                               llama_cpp_backend=backend, driver=driver, source=f"/sys/class/drm/{card['card']}", note=note))
    if gpu["mali"] and not seen & {"panfrost", "panthor", "mali"}:
        name = re.sub(r"\s.*$", "", gpu["mali"]) if gpu["mali"].startswith("Mali-") else "Arm Mali"
        out.append(Accelerator(kind="mali", name=name, shared_memory=True, llama_cpp_backend="vulkan", driver="mali kbase",
                               source="/sys/class/misc/mali0", note=f"{gpu['mali']}; Vulkan drivers installed: {', '.join(icds) or 'none'}"))
    egl = (props.get("ro.hardware.egl") or props.get("ro.hardware.vulkan") or "").lower()
    if (gpu["adreno"] or "adreno" in egl) and "msm" not in seen:
        out.append(Accelerator(kind="adreno", name=gpu["adreno"] or "Qualcomm Adreno", shared_memory=True, llama_cpp_backend="opencl",
                               driver="kgsl", source="/sys/class/kgsl/kgsl-3d0" if gpu["adreno"] else "ro.hardware.egl",
                               note="llama.cpp's OpenCL backend targets Adreno"))
    elif "mali" in egl and not any(a.kind == "mali" for a in out):
        out.append(Accelerator(kind="mali", name="Arm Mali", shared_memory=True, llama_cpp_backend="vulkan", driver=egl,
                               source="ro.hardware.egl / ro.hardware.vulkan", note="Vulkan on Android's Mali driver"))
    return out


def _vulkan(raw: dict[str, str], quick: bool, unknown: list[Unknown]) -> list[Accelerator]:
    devices = parse_vulkaninfo(raw.get("vulkaninfo", ""))
    if not devices:
        if quick and parse_vulkan_icds(raw.get("vulkan_icd", "")):
            unknown.append(Unknown("accelerators.vulkan", "Vulkan drivers installed; vulkaninfo not run (--quick)"))
        return []
    out: list[Accelerator] = []
    for dev in devices:
        software = dev["type"] == "CPU"
        out.append(Accelerator(
            kind="vulkan", name=dev["name"], shared_memory=dev["type"] != "DISCRETE_GPU",
            llama_cpp_backend=NOT_USABLE if software else "vulkan", driver=dev["driver"], source="vulkaninfo --summary",
            note="a software rasteriser on the CPU" if software else f"Vulkan {dev['api_version'] or '?'} device",
        ))
    return out


def _apple(raw: dict[str, str], darwin: dict[str, str]) -> list[Accelerator]:
    gpus = parse_system_profiler(raw.get("system_profiler", ""))
    if gpus:
        return [Accelerator(kind="apple-gpu", name=g["name"], shared_memory=True, llama_cpp_backend="metal", driver="Metal",
                            source="system_profiler SPDisplaysDataType",
                            note=", ".join(x for x in (f"{g['cores']} cores" if g["cores"] else "", g["metal"] or "") if x))
                for g in gpus]
    brand = darwin.get("machdep.cpu.brand_string", "")
    if brand.startswith("Apple"):
        return [Accelerator(kind="apple-gpu", name=f"{brand} GPU", shared_memory=True, llama_cpp_backend="metal", driver="Metal",
                            source="sysctl machdep.cpu.brand_string", note="unified memory")]
    return []


def _npus(raw: dict[str, str], props: dict[str, str]) -> list[Accelerator]:
    npu = parse_npu(raw.get("npu", ""))
    nodes = npu["nodes"]
    out: list[Accelerator] = []

    def add(name: str, source: str, note: str = "", driver: str | None = None) -> None:
        out.append(Accelerator(kind="npu", name=name, llama_cpp_backend=NOT_USABLE, source=source, note=note, driver=driver))

    rk = [n for n in nodes if "rknpu" in n or re.search(r"/npu@", n)]
    if rk or npu["rknpu_version"]:
        add("Rockchip RKNPU", ", ".join(rk) or "rknpu version file", "runs RKNN models (rknn-llm), not GGUF",
            f"rknpu {npu['rknpu_version']}" if npu["rknpu_version"] else None)
    if any(n.startswith("/dev/hailo") for n in nodes):
        add("Hailo NPU", ", ".join(n for n in nodes if n.startswith("/dev/hailo")), "runs Hailo HEF models")
    apex = [n for n in nodes if n.startswith("/dev/apex_")]
    if apex:
        add("Coral Edge TPU (PCIe)", ", ".join(apex), "runs TensorFlow Lite models")
    for usb_id in npu["usb_ids"]:
        add(usb_accelerator_name(usb_id), f"USB id {usb_id}", "runs TensorFlow Lite models")
    accel = [n for n in nodes if n.startswith("/dev/accel/")]
    for driver in npu["accel_drivers"] or (["unknown driver"] if accel else []):
        name = {"intel_vpu": "Intel NPU", "amdxdna": "AMD XDNA NPU", "qaic": "Qualcomm Cloud AI"}.get(driver, f"NPU ({driver})")
        add(name, ", ".join(accel) or "/sys/class/accel", driver=driver)
    fastrpc = [n for n in nodes if "fastrpc" in n or "adsprpc" in n]
    qualcomm = props.get("ro.soc.manufacturer", "").upper() in ("QTI", "QUALCOMM") or props.get("ro.hardware", "") == "qcom"
    if fastrpc or qualcomm:
        add("Qualcomm Hexagon DSP", ", ".join(fastrpc) or "ro.soc.manufacturer / ro.hardware", "reached through FastRPC")
    return out
