"""CPU: /proc/cpuinfo, cpufreq and capacity from sysfs, nproc; ARM part names and llama.cpp ISA names."""

from __future__ import annotations

import re
from typing import NamedTuple, TypedDict

from toolchain.probe.parsers.text import grep_h, to_int

MAX_CPUS = 16384  # the kernel's NR_CPUS ceiling; anything above is not a cpu number

# Kernel flag names that change which llama.cpp (ggml-cpu) kernels run, kept as the kernel spells them.
LLAMA_FEATURES = (
    "asimd", "neon", "dotprod", "asimddp", "i8mm", "sve", "sve2", "sme", "fphp", "asimdhp", "bf16",
    "sse3", "pni", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512vnni", "avx512_bf16", "avx512_vbmi", "avx512_fp16", "avx_vnni", "amx_tile",
    "amx_int8", "amx_bf16", "vfpv4", "lm",
)

# Kernel flag -> the name llama.cpp's system info uses (lower-cased), in llama.cpp's order.
_ISA = (
    ("neon", ("asimd", "neon")), ("fp16", ("asimdhp",)), ("dotprod", ("asimddp", "dotprod")), ("i8mm", ("i8mm",)),
    ("sve", ("sve",)), ("sve2", ("sve2",)), ("bf16", ("bf16",)), ("sme", ("sme",)),
    ("sse3", ("pni", "sse3")), ("ssse3", ("ssse3",)), ("avx", ("avx",)), ("avx_vnni", ("avx_vnni",)),
    ("avx2", ("avx2",)), ("f16c", ("f16c",)), ("fma", ("fma",)), ("bmi2", ("bmi2",)), ("avx512f", ("avx512f",)),
    ("avx512_vbmi", ("avx512_vbmi", "avx512vbmi")), ("avx512_vnni", ("avx512_vnni", "avx512vnni")),
    ("avx512_bf16", ("avx512_bf16",)), ("avx512_fp16", ("avx512_fp16",)),
    ("amx_int8", ("amx_int8",)), ("amx_bf16", ("amx_bf16",)), ("rvv", ("rvv",)),
)


class Part(NamedTuple):
    name: str
    little: bool = False  # an in-order efficiency core
    v8: bool = True  # implements ARMv8 or later: 64-bit capable


_ARM = {  # implementer 0x41 (Arm Ltd), from the Arm TRMs' MIDR part numbers
    "0xc07": Part("Cortex-A7", True, False), "0xc09": Part("Cortex-A9", False, False),
    "0xc0d": Part("Cortex-A12", False, False), "0xc0e": Part("Cortex-A17", False, False),
    "0xc0f": Part("Cortex-A15", False, False),
    "0xd03": Part("Cortex-A53", True), "0xd04": Part("Cortex-A35", True), "0xd05": Part("Cortex-A55", True),
    "0xd07": Part("Cortex-A57"), "0xd08": Part("Cortex-A72"), "0xd09": Part("Cortex-A73"), "0xd0a": Part("Cortex-A75"),
    "0xd0b": Part("Cortex-A76"), "0xd0c": Part("Neoverse-N1"), "0xd0d": Part("Cortex-A77"), "0xd0e": Part("Cortex-A76AE"),
    "0xd40": Part("Neoverse-V1"), "0xd41": Part("Cortex-A78"), "0xd42": Part("Cortex-A78AE"), "0xd44": Part("Cortex-X1"),
    "0xd46": Part("Cortex-A510", True), "0xd47": Part("Cortex-A710"), "0xd48": Part("Cortex-X2"),
    "0xd49": Part("Neoverse-N2"), "0xd4b": Part("Cortex-A78C"), "0xd4c": Part("Cortex-X1C"), "0xd4d": Part("Cortex-A715"),
    "0xd4e": Part("Cortex-X3"), "0xd4f": Part("Neoverse-V2"), "0xd80": Part("Cortex-A520", True),
    "0xd81": Part("Cortex-A720"), "0xd82": Part("Cortex-X4"), "0xd84": Part("Neoverse-V3"), "0xd85": Part("Cortex-X925"),
    "0xd87": Part("Cortex-A725"),
}
_OTHER = {  # (implementer, part)
    ("0x51", "0x800"): Part("Kryo 2xx Gold"), ("0x51", "0x801"): Part("Kryo 2xx Silver", True),
    ("0x51", "0x802"): Part("Kryo 3xx Gold"), ("0x51", "0x803"): Part("Kryo 3xx Silver", True),
    ("0x51", "0x804"): Part("Kryo 4xx Gold"), ("0x51", "0x805"): Part("Kryo 4xx Silver", True),
    ("0x51", "0x001"): Part("Oryon"), ("0x4e", "0x004"): Part("Carmel"), ("0x48", "0xd01"): Part("TaiShan v110"),
    ("0x61", "0x022"): Part("Apple Icestorm", True), ("0x61", "0x023"): Part("Apple Firestorm"),
}


def arm_part(implementer: str | None, part: str | None) -> Part | None:
    """MIDR implementer and part ('0x41', '0xd08') -> Part, None when unknown."""
    if not part:
        return None
    part, impl = part.lower(), (implementer or "0x41").lower()
    return _OTHER.get((impl, part)) or (_ARM.get(part) if impl == "0x41" else None)


class CpuInfo(TypedDict):
    count: int
    model_name: str | None
    hardware: str | None
    revision: str | None  # Raspberry Pi board revision code
    board_model: str | None  # the Pi's "Model" line
    architecture: str | None  # ARM "CPU architecture" (7 under a 32-bit kernel, even on ARMv8 cores)
    features: list[str]
    parts: dict[int, str]  # cpu -> ARM part ('0xd08') or x86 model name
    implementers: dict[int, str]
    cores: dict[int, str]  # cpu -> "physical id/core id": SMT siblings share one
    isa_string: str | None  # RISC-V "isa" line


# A line that holds several 'key : value' fields (line breaks lost in a paste) splits before each key.
_FIELD_SPLIT = re.compile(r"\s{3,}(?=[A-Za-z][A-Za-z0-9 _()]{0,30}?\s*:(?:\s|$))")


def parse_cpuinfo(text: str) -> CpuInfo:
    """/proc/cpuinfo (Linux, Android; ARM, x86, RISC-V) -> per-cpu parts and the union of flags."""
    processors: list[dict[str, str]] = []
    header: dict[str, str] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        for field in _FIELD_SPLIT.split(raw):
            if ":" not in field:
                continue
            key, _, value = field.partition(":")
            key, value = key.strip().lower(), value.strip()
            if key == "processor" and value.isdigit() and int(value) < MAX_CPUS:
                current = {"processor": value}
                processors.append(current)
            elif current is not None and not _board_key(key, value):
                current[key] = value
            else:
                header[key] = value
    flags: set[str] = set()
    for p in [*processors, header]:
        flags.update((p.get("flags") or p.get("features") or "").lower().split())
    isa_string = next((p["isa"] for p in [*processors, header] if p.get("isa")), None)
    if isa_string and re.match(r"^rv(32|64)[a-z]*v", isa_string.split("_")[0]):
        flags.add("rvv")
    model = next((p.get("model name") for p in processors if p.get("model name")), None)
    model = model or header.get("model name") or (header.get("processor") if not header.get("processor", "").isdigit() else None)
    ids = [int(p["processor"]) for p in processors]
    return {
        "count": len(processors),
        "model_name": model or None,
        "hardware": header.get("hardware") or None,
        "revision": header.get("revision") or None,
        "board_model": header.get("model") or None,
        "architecture": next((p["cpu architecture"] for p in [*processors, header] if p.get("cpu architecture")), None),
        "features": sorted(flags),
        "parts": {i: p["cpu part"].lower() if p.get("cpu part") else p.get("model name", "") for i, p in zip(ids, processors, strict=True)},
        "implementers": {i: p["cpu implementer"].lower() for i, p in zip(ids, processors, strict=True) if p.get("cpu implementer")},
        "cores": {i: f"{p['physical id']}/{p['core id']}" for i, p in zip(ids, processors, strict=True) if "core id" in p and "physical id" in p},
        "isa_string": isa_string,
    }


def _board_key(key: str, value: str) -> bool:
    """Board lines (Pi: Hardware, Revision, Serial, Model) follow the last stanza; x86's numeric 'model' is per cpu."""
    return key in ("hardware", "revision", "serial") or (key == "model" and not value.isdigit())


def llama_features(flags: list[str]) -> list[str]:
    have = set(flags)
    return [f for f in LLAMA_FEATURES if f in have]


def isa_names(flags: list[str]) -> list[str]:
    """Kernel flags -> llama.cpp's ISA names (asimddp -> dotprod, pni -> sse3, ...)."""
    have = set(flags)
    return [name for name, kernel in _ISA if have & set(kernel)]


class CpuFreq(TypedDict):
    online: list[int]
    max_mhz: dict[int, float]
    capacity: dict[int, int]
    atom: list[int]  # Intel hybrid parts: the E-cores (/sys/devices/cpu_atom/cpus)


def parse_cpu_list(text: str) -> list[int]:
    """Kernel CPU list '0-3,6' -> [0, 1, 2, 3, 6]; garbage -> []."""
    out: list[int] = []
    for part in text.strip().split(","):
        m = re.match(r"^(\d+)(?:-(\d+))?$", part.strip())
        if not m:
            return []
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= MAX_CPUS:
            return []
        out.extend(range(lo, hi + 1))
    return out


def parse_cpufreq(text: str) -> CpuFreq:
    """`grep -sH . online cpu*/cpufreq/cpuinfo_max_freq cpu*/cpu_capacity ../../cpu_atom/cpus`
    in /sys/devices/system/cpu."""
    out: CpuFreq = {"online": [], "max_mhz": {}, "capacity": {}, "atom": []}
    for path, value in grep_h(text):
        if path == "online":
            out["online"] = parse_cpu_list(value)
            continue
        if path == "../../cpu_atom/cpus":
            out["atom"] = parse_cpu_list(value)
            continue
        m = re.match(r"^cpu(\d+)/(cpufreq/cpuinfo_max_freq|cpu_capacity)$", path)
        number = to_int(value)
        if not m or number is None or number <= 0 or int(m.group(1)) >= MAX_CPUS:
            continue
        if m.group(2) == "cpu_capacity":
            out["capacity"][int(m.group(1))] = number
        else:
            out["max_mhz"][int(m.group(1))] = number / 1000.0
    return out


def parse_nproc(text: str) -> int | None:
    for line in text.splitlines():
        n = to_int(line)
        if n is not None and 0 < n <= MAX_CPUS:
            return n
    return None
