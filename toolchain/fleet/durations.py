"""Durations in lab files: a number of seconds, or 500ms / 30s / 10m / 2h."""

from __future__ import annotations

import math
import re

from toolchain.core.errors import BadInputError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration_s(value: object, where: str) -> float:
    """A positive duration in seconds; `where` names the file and key for the error."""
    if isinstance(value, bool):
        raise BadInputError(f"{where} is {value!r}, not a duration", "use seconds (30) or a duration such as 30s, 10m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|min|m|h)", str(value).strip().lower())
        if not m:
            raise BadInputError(f"{where} is {value!r}, not a duration", "use seconds (30) or a duration such as 30s, 10m, 1h")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadInputError(f"{where} is {value!r}: durations must be positive and finite", "use seconds (30) or a duration such as 30s, 10m, 1h")
    return seconds


def fmt_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
