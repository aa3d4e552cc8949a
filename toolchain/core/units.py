"""Parse and format quantities with units. Bare numbers are refused: units say what is meant."""

from __future__ import annotations

import re

from toolchain.core.errors import BadInputError
from toolchain.core.nouns import Budget

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
BUDGET_FORMS = "a per-token latency such as 120ms or 0.12s, or a rate such as 8.33tok/s"


def parse_budget(text: str) -> Budget:
    """'120ms', '0.12s' or '8.33tok/s' -> a per-token decode latency budget."""
    raw = text.strip().lower().replace(" ", "")
    m = re.fullmatch(_NUM + r"(ms|s|tok/s|tokens/s|t/s)", raw)
    if not m:
        raise BadInputError(f"budget {text!r} has no recognised unit", f"use {BUDGET_FORMS}")
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        raise BadInputError(f"budget {text!r} must be positive", f"use {BUDGET_FORMS}")
    if unit == "ms":
        ms = value
    elif unit == "s":
        ms = value * 1000.0
    else:
        ms = 1000.0 / value
    return Budget(decode_ms_per_token=ms, source=text)


def parse_duration_ms(text: str, what: str) -> float:
    m = re.fullmatch(_NUM + r"(ms|s)", text.strip().lower())
    if not m:
        raise BadInputError(f"{what} {text!r} has no recognised unit", "use a duration such as 500ms or 2s")
    ms = float(m.group(1)) * (1.0 if m.group(2) == "ms" else 1000.0)
    if ms <= 0:
        raise BadInputError(f"{what} {text!r} must be positive", "use a duration such as 500ms or 2s")
    return ms


def parse_size(text: str, what: str = "size") -> int:
    """'8GB', '7.5GiB', '512MiB' -> bytes (decimal for GB, binary for GiB)."""
    m = re.fullmatch(_NUM + r"([kmgt]?i?b?)", text.strip().lower().replace(" ", ""))
    if not m or m.group(2) in ("", "i", "ki", "mi", "gi", "ti"):
        raise BadInputError(f"{what} {text!r} has no recognised unit", "use a size such as 8GB, 7.5GiB or 512MiB")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise BadInputError(f"{what} {text!r} must be positive", "use a size such as 8GB, 7.5GiB or 512MiB")
    return size


def parse_rate(text: str, what: str = "rate") -> float:
    """'17GB/s', '900MB/s', '12.5GiB/s' -> bytes per second."""
    raw = text.strip().lower().replace(" ", "")
    if not raw.endswith("/s"):
        raise BadInputError(f"{what} {text!r} has no recognised unit", "use a rate such as 17GB/s or 900MB/s")
    rate = float(parse_size(raw[:-2], what))
    if rate <= 0:
        raise BadInputError(f"{what} {text!r} must be positive", "use a rate such as 17GB/s or 900MB/s")
    return rate


def fmt_bytes(n: float | int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def fmt_rate(n: float | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} GB/s" if n >= 1e9 else f"{n / 1e6:.0f} MB/s"
