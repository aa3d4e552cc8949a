"""Every measurement on a device is stored; the next plan for that device is corrected by it.

Records live in <data dir>/calibration.jsonl, keyed by a device fingerprint. The correction is
the median ratio measured/predicted of decode time over that device's records (robust to one
bad run), so a device's first plan uses the default basis and later plans converge on it.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.models import HostFacts
from toolchain.paths import data_dir

MAX_RECORDS = 50  # per fingerprint: recent behaviour wins over old firmware/kernels


@dataclass(frozen=True)
class Correction:
    factor: float  # multiply predicted decode time by this
    records: int
    source: str


def fingerprint(facts: HostFacts) -> str:
    name = facts.board.model or facts.board.android_model or facts.cpu.model_name or "unknown"
    gib = round(facts.memory.total_bytes / (1 << 30))
    return f"{name}|{facts.cpu.arch}|{facts.cpu.cores}c|{gib}GiB"


def store_path() -> Path:
    return data_dir() / "calibration.jsonl"


def record(fp: str, data: dict[str, Any], path: Path | None = None) -> None:
    path = path or store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"fingerprint": fp, "time": time.time(), **data}, sort_keys=True) + "\n")


def load(fp: str, path: Path | None = None) -> list[dict[str, Any]]:
    path = path or store_path()
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("fingerprint") == fp:
            out.append(item)
    return out[-MAX_RECORDS:]


def correction(records: list[dict[str, Any]]) -> Correction:
    ratios = [
        float(r["measured_decode_s"]) / float(r["predicted_decode_s"])
        for r in records
        if r.get("predicted_decode_s") and r.get("measured_decode_s") and r.get("uncorrected", True)
    ]
    if not ratios:
        return Correction(1.0, 0, "default (no measurements of this device yet)")
    f = statistics.median(ratios)
    return Correction(f, len(ratios), f"fitted from {len(ratios)} measurement(s) on this device (x{f:.2f})")
