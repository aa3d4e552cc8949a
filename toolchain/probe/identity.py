"""Board and OS identity from the parsed facts (pure)."""

from __future__ import annotations

import re

from toolchain.core.nouns import BoardFacts, OsFacts, Unknown
from toolchain.probe.parsers.cpu import CpuInfo
from toolchain.probe.parsers.system import Uname, parse_dmi, parse_dt_compatible, parse_dt_model, parse_libc, parse_nv_tegra_release

MiB = 1 << 20
_64BIT = re.compile(r"^(aarch64|arm64|x86_64|amd64|riscv64|ppc64(le)?|s390x|mips64(el)?|loongarch64|sparc64)$")
_32BIT = re.compile(r"^(armv\d.*|arm|i[3-6]86|x86|riscv32|mips(el)?|ppc)$")


def board_facts(raw: dict[str, str], props: dict[str, str], darwin: dict[str, str], cpuinfo: CpuInfo, unknown: list[Unknown]) -> BoardFacts:
    dt_model = parse_dt_model(raw.get("dt_model", ""))
    compatible = parse_dt_compatible(raw.get("dt_compatible", ""))
    dmi = parse_dmi(raw.get("dmi", ""))
    android_model = props.get("ro.product.model") or None
    model = dt_model or dmi.get("product_name") or android_model or darwin.get("hw.model") or cpuinfo["board_model"]
    if not model:
        unknown.append(Unknown("board.model", "no device-tree model, DMI product name, Android ro.product.model or macOS hw.model"))
    return BoardFacts(
        model=model,
        compatible=compatible,
        dmi_product=dmi.get("product_name"),
        android_model=android_model,
        android_soc=props.get("ro.soc.model") or None,
        android_platform=props.get("ro.board.platform") or None,
        mac_model=darwin.get("hw.model"),
        dmi_vendor=dmi.get("sys_vendor"),
        android_hardware=props.get("ro.hardware") or props.get("ro.boot.hardware") or None,
        soc=_soc(props, compatible, cpuinfo),
        revision=cpuinfo["revision"] if re.match(r"^[0-9a-fA-F]{4,8}$", cpuinfo["revision"] or "") else None,
        nominal_ram_bytes=_nominal_ram(cpuinfo["revision"], props),
        jetson_l4t=parse_nv_tegra_release(raw.get("tegra_release", "")),
    )


def _soc(props: dict[str, str], compatible: list[str], cpuinfo: CpuInfo) -> str | None:
    if props.get("ro.soc.model"):
        maker = props.get("ro.soc.manufacturer", "")
        return f"{maker} {props['ro.soc.model']}".strip()
    # Device-tree convention: board entries first, the SoC last; skip family wildcards (tegra23x).
    for entry in reversed(compatible):
        name = entry.split(",", 1)[1]
        if not re.search(r"\dx$", name):
            return name
    return cpuinfo["hardware"]


def _nominal_ram(revision: str | None, props: dict[str, str]) -> int | None:
    """RAM as sold: a Raspberry Pi new-style revision code (bit 23 set) holds it in bits 20-22;
    Android's ro.boot.hardware.ddr reads like '3072MB,HYNIX,LPDDR4'."""
    if revision and re.match(r"^[0-9a-fA-F]{6,8}$", revision):
        code = int(revision, 16)
        if code & (1 << 23):
            return (256 * MiB) << ((code >> 20) & 7)
    m = re.match(r"^\s*(\d+)\s*(MB|GB)\b", props.get("ro.boot.hardware.ddr", ""), re.IGNORECASE)
    if m:
        return int(m.group(1)) * (MiB if m.group(2).upper() == "MB" else 1024 * MiB)
    return None


def os_facts(raw: dict[str, str], uname: Uname, osr: dict[str, str], props: dict[str, str], darwin: dict[str, str],
             unknown: list[Unknown]) -> OsFacts:
    if props.get("ro.build.version.release"):
        kind = "android"
    elif uname["system"] == "Darwin" or darwin.get("ProductName"):
        kind = "darwin"
    else:
        kind = (uname["system"] or "unknown").lower()
    if kind == "unknown":
        unknown.append(Unknown("os.kind", "uname printed nothing"))
    libc = parse_libc(raw.get("libc", ""))
    if kind == "android":
        libc_text: str | None = "bionic"
        distribution: str | None = f"Android {props['ro.build.version.release']}" + (
            f" (SDK {props['ro.build.version.sdk']})" if props.get("ro.build.version.sdk") else "")
        dist_id: str | None = "android"
    elif kind == "darwin":
        libc_text = "libSystem"
        distribution = " ".join(x for x in (darwin.get("ProductName"), darwin.get("ProductVersion")) if x) or None
        dist_id = "macos"
    else:
        libc_text = f"{libc['name']} {libc['version']}".strip() if libc["name"] and libc["version"] else libc["name"]
        distribution = osr.get("PRETTY_NAME") or " ".join(x for x in (osr.get("NAME"), osr.get("VERSION")) if x) or None
        dist_id = osr.get("ID") or None
    if libc_text is None:
        unknown.append(Unknown("os.libc", "neither getconf GNU_LIBC_VERSION nor ldd --version named a C library"))
    arch = uname["machine"]
    return OsFacts(
        kind=kind, kernel=uname["kernel"], distribution=distribution, arch=arch, libc=libc_text, distribution_id=dist_id,
        kernel_bits=word_bits(arch), userland_bits=uname["userland_bits"],
    )


def word_bits(machine: str | None) -> int | None:
    if not machine:
        return None
    return 64 if _64BIT.match(machine) else 32 if _32BIT.match(machine) else None


def arch_note(os: OsFacts, hardware_64bit: bool | None, cpu_name: str | None, python_bits: int | None) -> str | None:
    """Say when the software is narrower than the hardware: llama.cpp then runs 32-bit code."""
    what = f" ({cpu_name})" if cpu_name else ""
    if os.kernel_bits == 32 and hardware_64bit:
        return (f"32-bit kernel ({os.arch}) on 64-bit hardware{what}: llama.cpp runs as 32-bit code (no dotprod/i8mm "
                "kernels, at most 3 GiB per process); a 64-bit OS image would be faster")
    userland = python_bits or os.userland_bits
    if os.kernel_bits == 64 and userland == 32:
        return f"64-bit kernel ({os.arch}) with a 32-bit userland: llama.cpp runs as 32-bit code (at most 3 GiB per process)"
    return None
