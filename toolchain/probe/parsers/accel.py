"""Accelerators: nvidia-smi, tegrastats, Vulkan, Mali/Adreno/DRM sysfs, NPU device nodes, macOS GPUs."""

from __future__ import annotations

import re
from typing import TypedDict

from toolchain.probe.parsers.text import grep_h, to_float, to_int

MiB = 1 << 20


class NvidiaGpu(TypedDict):
    name: str
    memory_bytes: int | None
    memory_note: str | None  # why memory_bytes is None ("Not Supported": shared memory on Jetson)


def parse_nvidia_smi(text: str) -> list[NvidiaGpu]:
    """`nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`, or its default table."""
    if "|" in text:
        return _nvidia_table(text)
    out: list[NvidiaGpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 1)]
        if len(parts) != 2 or not parts[0] or "failed" in line.lower() or "error" in line.lower():
            continue
        m = re.match(r"^(\d+)\s*MiB$", parts[1])
        note = None if m else parts[1].strip("[]") or "empty"
        out.append({"name": parts[0], "memory_bytes": int(m.group(1)) * MiB if m else None, "memory_note": note})
    return out


def _nvidia_table(text: str) -> list[NvidiaGpu]:
    out: list[NvidiaGpu] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off|N/A)\s+\|", line)
        if not m or i + 1 >= len(lines):
            continue
        cells = lines[i + 1].split("|")
        memory = cells[2].strip() if len(cells) > 2 else ""
        used_total = re.match(r"^(\d+)\s*MiB\s*/\s*(\d+)\s*MiB$", memory)
        out.append({
            "name": m.group(2).strip(),
            "memory_bytes": int(used_total.group(2)) * MiB if used_total else None,
            "memory_note": None if used_total else memory or "absent",
        })
    return out


class Tegrastats(TypedDict):
    ram_used_mb: int | None
    ram_total_mb: int | None
    swap_total_mb: int | None
    cpu_mhz: list[int]
    emc_mhz: int | None  # memory controller clock
    gpu_mhz: int | None
    temperatures_c: dict[str, float]
    rails_mw: dict[str, int]  # current draw per power rail


def parse_tegrastats(text: str) -> Tegrastats:
    """One tegrastats line (JetPack 4 to 6 formats: rails as '153/158' or '8896mW/7585mW')."""
    line = next((ln for ln in text.splitlines() if "RAM " in ln), "")
    ram = re.search(r"\bRAM (\d+)/(\d+)MB", line)
    swap = re.search(r"\bSWAP (\d+)/(\d+)MB", line)
    cpus = re.search(r"\bCPU \[([^\]]*)\]", line)
    emc = re.search(r"\bEMC_FREQ \d+%@(\d+)", line)
    gpu = re.search(r"\bGR3D_FREQ \d+%@\[?(\d+)", line)
    return {
        "ram_used_mb": int(ram.group(1)) if ram else None,
        "ram_total_mb": int(ram.group(2)) if ram else None,
        "swap_total_mb": int(swap.group(2)) if swap else None,
        "cpu_mhz": [int(f) for f in re.findall(r"%@(\d+)", cpus.group(1))] if cpus else [],
        "emc_mhz": int(emc.group(1)) if emc else None,
        "gpu_mhz": int(gpu.group(1)) if gpu else None,
        "temperatures_c": {k: float(v) for k, v in re.findall(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b", line)},
        "rails_mw": {k: int(v) for k, v in re.findall(r"\b((?:VDD|VIN|POM)_[A-Z0-9_]+) (\d+)(?:mW)?/\d+(?:mW)?", line)},
    }


class VulkanDevice(TypedDict):
    name: str
    type: str | None  # DISCRETE_GPU | INTEGRATED_GPU | CPU (a software renderer) | ...
    driver: str | None
    api_version: str | None


def parse_vulkaninfo(text: str) -> list[VulkanDevice]:
    """`vulkaninfo --summary`: the 'GPUn:' blocks of its Devices section."""
    out: list[VulkanDevice] = []
    block: dict[str, str] | None = None
    for line in [*text.splitlines(), "GPUEND:"]:
        if re.match(r"^GPU\w*:\s*$", line.strip()) and line == line.lstrip():
            if block and block.get("deviceName"):
                out.append({
                    "name": block["deviceName"],
                    "type": block.get("deviceType", "").replace("PHYSICAL_DEVICE_TYPE_", "") or None,
                    "driver": block.get("driverName") or block.get("driverID") or None,
                    "api_version": block.get("apiVersion") or None,
                })
            block = {}
        elif block is not None:
            m = re.match(r"^\s+(\w+)\s*=\s*(.*)$", line)
            if m:
                block[m.group(1)] = m.group(2).strip()
    return out


def parse_vulkan_icds(text: str) -> list[str]:
    """Installed Vulkan drivers: the ICD manifests `ls` finds in the icd.d directories."""
    return sorted({m.group(1) for m in re.finditer(r"(?:^|[\s/])([\w.\-]+\.json)(?=\s|$)", text)})


class GpuSysfs(TypedDict):
    mali: str | None  # gpuinfo of the Arm kbase driver, or "Mali" when only the node exists
    adreno: str | None  # kgsl gpu_model
    drm: list[dict[str, str]]  # per DRM card: driver, of_compatible, pci_id
    nodes: list[str]


def parse_gpu_sysfs(text: str) -> GpuSysfs:
    """`grep -sH .` of mali0/kgsl/DRM uevent files (relative paths), then `ls -d` of device nodes."""
    out: GpuSysfs = {"mali": None, "adreno": None, "drm": [], "nodes": []}
    cards: dict[str, dict[str, str]] = {}
    for path, value in grep_h(text):
        if path.endswith("gpuinfo"):
            out["mali"] = value
        elif path.endswith("gpu_model"):
            out["adreno"] = value
        else:
            m = re.match(r"^(?:.*/)?(card\d+)/device/uevent$", path)
            kv = re.match(r"^(DRIVER|OF_COMPATIBLE_0|PCI_ID)=(.+)$", value)
            if m and kv:
                cards.setdefault(m.group(1), {})[kv.group(1).lower()] = kv.group(2)
    for line in text.splitlines():
        if re.match(r"^/(dev|sys)/[^\s:]+$", line.strip()):  # `ls -d` lines; grep's 'path:value' lines hold a ':'
            out["nodes"].append(line.strip())
            if "mali" in line and out["mali"] is None:
                out["mali"] = "Mali"
    out["drm"] = [{"card": card, **props} for card, props in sorted(cards.items())]
    return out


class Npu(TypedDict):
    nodes: list[str]  # /dev/rknpu*, /dev/hailo*, /dev/apex_*, /dev/accel/accel*, /dev/fastrpc-*, DT npu@ nodes
    rknpu_version: str | None
    accel_drivers: list[str]
    usb_ids: list[str]  # vendor:product of USB devices that are accelerators


_USB_ACCELERATORS = {"1a6e:089a": "Coral USB Accelerator (not yet initialised)", "18d1:9302": "Coral USB Accelerator"}


def parse_npu(text: str) -> Npu:
    out: Npu = {"nodes": [], "rknpu_version": None, "accel_drivers": [], "usb_ids": []}
    usb: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if re.match(r"^/(dev|proc|sys)/[^\s:]+$", line.strip()):
            out["nodes"].append(line.strip())
    for path, value in grep_h(text):
        if path.endswith("rknpu/version"):
            m = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", value)
            out["rknpu_version"] = m.group(1) if m else value
        elif path.endswith("/uevent") and value.startswith("DRIVER="):
            out["accel_drivers"].append(value[len("DRIVER="):])
        else:
            m = re.match(r"^(?:.*/)?([^/]+)/(idVendor|idProduct)$", path)
            if m and re.match(r"^[0-9a-fA-F]{4}$", value):
                usb.setdefault(m.group(1), {})[m.group(2)] = value.lower()
    ids = {f"{d['idVendor']}:{d['idProduct']}" for d in usb.values() if len(d) == 2}
    out["usb_ids"] = sorted(ids & set(_USB_ACCELERATORS))
    return out


def usb_accelerator_name(usb_id: str) -> str:
    return _USB_ACCELERATORS.get(usb_id, usb_id)


class AppleGpu(TypedDict):
    name: str
    cores: int | None
    metal: str | None


def parse_system_profiler(text: str) -> list[AppleGpu]:
    """`system_profiler SPDisplaysDataType`: 'Chipset Model', 'Total Number of Cores', 'Metal ...'."""
    out: list[AppleGpu] = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "Chipset Model" and value:
            out.append({"name": value, "cores": None, "metal": None})
        elif out and key == "Total Number of Cores":
            out[-1]["cores"] = to_int(value)
        elif out and key.startswith("Metal") and value:
            out[-1]["metal"] = value
    return out


def parse_pmic(text: str) -> dict[str, float]:
    """Raspberry Pi 5 `vcgencmd pmic_read_adc`: 'VDD_CORE_A current(7)=2.18660000A' lines -> {rail: value}.

    Pi 4 firmware answers 'Command not registered': no rails."""
    out: dict[str, float] = {}
    for name, value in re.findall(r"^\s*(\w+)\s+(?:current|volt)\(\d+\)=(-?[\d.]+)[AV]\s*$", text, re.MULTILINE):
        number = to_float(value)
        if number is not None:
            out[name] = number
    return out
