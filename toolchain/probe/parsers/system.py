"""Board identity and OS: uname, os-release, libc, getprop, device tree, DMI, L4T, macOS sysctl."""

from __future__ import annotations

import re
from typing import TypedDict

from toolchain.probe.parsers.text import clean_value, grep_h, to_int


class Uname(TypedDict):
    system: str | None
    kernel: str | None
    machine: str | None
    userland_bits: int | None


def parse_uname(text: str) -> Uname:
    """`uname -srm; getconf LONG_BIT` ('Linux 6.1.61-v8+ aarch64' then '64'); also one value a line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "not found" not in line]
    words: list[str] = []
    bits: int | None = None
    for line in lines:
        parts = line.split()
        if len(parts) == 1 and to_int(parts[0]) in (32, 64) and len(words) >= 3:
            bits = to_int(parts[0])
        elif len(words) < 3 and (len(parts) == 3 or len(parts) == 1):
            words += parts
    words = words[:3] + [""] * (3 - len(words[:3]))
    return {"system": words[0] or None, "kernel": words[1] or None, "machine": words[2] or None, "userland_bits": bits}


def parse_os_release(text: str) -> dict[str, str]:
    """/etc/os-release KEY=value lines (quotes removed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip().strip("\"'")
    return out


class Libc(TypedDict):
    name: str | None  # glibc | musl | uclibc
    version: str | None


def parse_libc(text: str) -> Libc:
    """`getconf GNU_LIBC_VERSION` ('glibc 2.36') or `ldd --version` (glibc's or musl's banner)."""
    m = re.search(r"^glibc (\d+\.\d+(?:\.\d+)?)\s*$", text, re.MULTILINE)
    if m:
        return {"name": "glibc", "version": m.group(1)}
    m = re.search(r"^ldd \(.*?(?:GLIBC|GNU libc|glibc).*?\) (\d+\.\d+(?:\.\d+)?)", text, re.MULTILINE | re.IGNORECASE)
    if m:
        return {"name": "glibc", "version": m.group(1)}
    if re.search(r"^musl libc", text, re.MULTILINE):
        v = re.search(r"^Version (\d+\.\d+(?:\.\d+)?)", text, re.MULTILINE)
        return {"name": "musl", "version": v.group(1) if v else None}
    if re.search(r"uClibc", text):
        return {"name": "uclibc", "version": None}
    return {"name": None, "version": None}


_GETPROP_BRACKETS = re.compile(r"^\s*\[([^\]]+)\]\s*:\s*\[(.*)\]\s*$")
_GETPROP_JSON = re.compile(r'^\s*"([A-Za-z0-9_.\-]+)"\s*:\s*"(.*)",?\s*$')
_GETPROP_EQUALS = re.compile(r"^\s*([a-z][a-z0-9_\-]*(?:\.[a-z0-9_\-]+)+)\s*=\s*(.*)$")


def parse_getprop(text: str) -> dict[str, str]:
    """Android `getprop`: '[key]: [value]' lines; also 'key=value' (build.prop) and JSON dumps.

    Multi-line values (rare) keep their first line; prompts and other noise are ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _GETPROP_BRACKETS.match(line) or _GETPROP_JSON.match(line) or _GETPROP_EQUALS.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def parse_dt_model(text: str) -> str | None:
    """/proc/device-tree/model with NULs removed."""
    return clean_value(text.split("\n", 1)[0]) if text.strip() else None


def parse_dt_compatible(text: str) -> list[str]:
    """/proc/device-tree/compatible, one entry a line (NULs turned into newlines).

    Tolerates sbc-bench's listing ('DT compat: a' then indented lines)."""
    out: list[str] = []
    for line in text.replace("\x00", "\n").splitlines():
        line = re.sub(r"^\s*DT compat:\s*", "", line).strip()
        if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*,[A-Za-z0-9_.+\-]+$", line):
            out.append(line)
    return out


def parse_dmi(text: str) -> dict[str, str]:
    """`grep -sH . product_name sys_vendor ...` in /sys/class/dmi/id -> {file: value}.

    Placeholder values firmware leaves in DMI ('To Be Filled By O.E.M.', 'Default string') are dropped."""
    out: dict[str, str] = {}
    for path, value in grep_h(text):
        if value and not re.search(r"(?i)to be filled|default string|^system product name$|^not applicable$|^unknown$", value):
            out[path.rsplit("/", 1)[-1]] = value
    return out


def parse_nv_tegra_release(text: str) -> str | None:
    """First line of /etc/nv_tegra_release -> 'R36.4.0' (L4T release and revision)."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text)
    if not m:
        return None
    revision = m.group(2) if "." in m.group(2) else m.group(2) + ".0"
    return f"R{m.group(1)}.{revision}"


def parse_darwin(text: str) -> dict[str, str]:
    """macOS `sysctl NAME...` ('name: value'), `sw_vers` ('ProductName:\\tmacOS') and `vm_stat` lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z][A-Za-z0-9_.]*)\s*[:=]\s*(.*)$", line.strip())
        m = m or re.match(r"^(Pages [a-z \-]+?):\s+(\d+)\.$", line.strip())  # vm_stat
        if m and m.group(2).strip():
            out[m.group(1)] = m.group(2).strip()
    return out
