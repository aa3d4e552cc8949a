"""Small helpers shared by the parsers. Everything here is total: any str in, no exception out."""

from __future__ import annotations

import json
import re

_INT = re.compile(r"^[+-]?\d+$")


def to_int(text: str | None) -> int | None:
    """'  42 ' -> 42; anything else -> None."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if _INT.match(text) else None


def to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None  # no NaN/inf


def grep_h(text: str) -> list[tuple[str, str]]:
    """`grep -sH . FILES` output -> [(path, value)], split at the first ':'.

    The fact commands cd into sysfs first and grep relative paths, so no path holds a ':'
    (values may: uevent's PCI_ID=10DE:2504)."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        if sep and path and " " not in path:
            out.append((path, value.strip()))
    return out


def parse_json_line(text: str) -> dict[str, object] | None:
    """The last line that is a JSON object (python snippets print one), else None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def clean_value(value: str) -> str | None:
    """Strip NULs and whitespace; empty -> None."""
    value = value.replace("\x00", "").strip()
    return value or None

