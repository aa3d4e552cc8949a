"""`probe --record DIR`: raw outputs of every fact, scrubbed, for contributing a fixture."""

from __future__ import annotations

import json
import re
from pathlib import Path

_SCRUB = [
    (re.compile(r"(?im)^(serial\s*:\s*).+$"), r"\1<scrubbed>"),
    (re.compile(r"(?m)^\[(ro\.serialno|ro\.boot\.serialno|persist\.sys\.device_name|net\.hostname)\]: \[.*\]$"), r"[\1]: [<scrubbed>]"),
    (re.compile(r"(?m)^(HOSTNAME|hostname)=.*$"), r"\1=<scrubbed>"),
]


def scrub(text: str) -> str:
    for pattern, repl in _SCRUB:
        text = pattern.sub(repl, text)
    return text


def write_recording(directory: Path, raw: dict[str, str], *, target: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in raw.items():
        (directory / f"{name}.txt").write_text(scrub(text) + "\n")
    (directory / "recording.json").write_text(json.dumps({"target": "<scrubbed>" if "@" in target else target, "facts": sorted(raw)}, indent=2) + "\n")
