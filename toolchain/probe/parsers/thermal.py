"""Thermal and power: thermal zones, the Pi's throttling bits, which power sensors exist."""

from __future__ import annotations

import re
from typing import TypedDict

from toolchain.probe.parsers.text import grep_h, to_int

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLED_BITS = {
    0: "under-voltage now", 1: "arm frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
    16: "under-voltage occurred", 17: "arm frequency capping occurred", 18: "throttling occurred",
    19: "soft temperature limit occurred",
}


def parse_thermal(text: str) -> dict[str, float]:
    """`grep -sH . thermal_zone*/type thermal_zone*/temp` in /sys/class/thermal -> {type: °C}.

    temp is in millidegrees; a type seen twice gets its zone number appended."""
    types: dict[str, str] = {}
    temps: dict[str, int] = {}
    for path, value in grep_h(text):
        m = re.match(r"^(thermal_zone\d+)/(type|temp)$", path)
        if not m:
            continue
        if m.group(2) == "type" and value:
            types[m.group(1)] = value
        elif (t := to_int(value)) is not None:
            temps[m.group(1)] = t
    out: dict[str, float] = {}
    for zone in sorted(temps, key=lambda z: int(z[len("thermal_zone"):])):
        name = types.get(zone, zone)
        if name in out:
            name = f"{name}.{zone[len('thermal_zone'):]}"
        celsius = temps[zone] / 1000.0 if abs(temps[zone]) >= 200 else float(temps[zone])
        if -60 <= celsius <= 200:  # disabled zones report nonsense such as -274000
            out[name] = round(celsius, 1)
    return out


class Throttled(TypedDict):
    raw: str | None
    flags: list[str]
    now: bool | None  # throttling or capping right now


def parse_throttled(text: str) -> Throttled:
    """`vcgencmd get_throttled` -> 'throttled=0x50005' decoded."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    if not m:
        return {"raw": None, "flags": [], "now": None}
    value = int(m.group(1), 16)
    return {
        "raw": m.group(1),
        "flags": [name for bit, name in THROTTLED_BITS.items() if value & (1 << bit)],
        "now": bool(value & 0xF),
    }


def parse_power(text: str) -> list[str]:
    """Power sensors: `ls -d` of RAPL, hwmon power/current inputs and power_supply files, then
    `grep -sH .` of hwmon names and labels (relative to /sys/class/hwmon)."""
    names: dict[str, str] = {}
    labels: dict[str, str] = {}
    for path, value in grep_h(text):
        m = re.match(r"^(hwmon\d+)/(name|((?:in|curr|power)\d+)_label)$", path)
        if m and m.group(2) == "name":
            names[m.group(1)] = value
        elif m and m.group(3):
            labels[f"{m.group(1)}/{m.group(3)}"] = value
    out: list[str] = []
    for line in text.splitlines():
        path = line.strip()
        if m := re.match(r"^/sys/class/powercap/(intel-rapl:\d+(?::\d+)?)$", path):
            out.append(f"rapl {m.group(1)}")
        elif m := re.match(r"^/sys/class/hwmon/(hwmon\d+)/(power|curr)(\d+)_input$", path):
            hw, kind, n = m.groups()
            label = labels.get(f"{hw}/{kind}{n}") or labels.get(f"{hw}/in{n}")  # INA3221 labels the voltage input
            out.append(f"hwmon {names.get(hw, hw)} {kind}{n}" + (f" ({label})" if label else ""))
        elif m := re.match(r"^/sys/class/power_supply/([^/]+)/(current_now|voltage_now|power_now)$", path):
            out.append(f"power_supply {m.group(1)} {m.group(2)}")
    return out
