"""First contact: measure llama.cpp's decode on the device itself and store it as measurements.

The device side is toolchain/device/calibrate.py (shipped with runner.py and events.py: a few tens
of kB; the models are written and quantized there). Each model it measured becomes a
DeviceMeasurement of origin "calibration", stored like a shipped run's, so the planner's fit
(calibration.fit_device) gives the device its own efficiency per kernel family and its fixed
per-token and per-layer costs before anything is shipped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from toolchain.core.errors import TargetError
from toolchain.core.events import Events
from toolchain.core.nouns import HostFacts
from toolchain.core.serde import typed_dict_from
from toolchain.device.calibrate import CalibrationResult
from toolchain.plan import calibration
from toolchain.plan.basis import Overrides
from toolchain.store.records import DeviceMeasurement
from toolchain.transports.base import Transport

DEVICE_FILES = ("calibrate.py", "runner.py", "events.py")
# On this 2-core x86 machine it takes ~30 s; a Pi 5 (4 x A76, SD card) is expected within ~2 min
# (a ~140 MB F16 file written and quantized four times); a slow board gets this long.
TIMEOUT_S = 900.0
MAX_RESULTS_BYTES = 1 << 20


@dataclass(frozen=True)
class Calibration:
    records: list[DeviceMeasurement]
    wall_s: float  # on the device, writing, quantizing and measuring
    total_s: float  # seen from the host, transfers included


def needs_calibration(facts: HostFacts) -> bool:
    """A device with no stored measurements (neither a calibration nor a shipped run)."""
    return not calibration.load(calibration.fingerprint(facts))


def calibrate(transport: Transport, root: str, python: str, facts: HostFacts, events: Events, *, local_dir: Path,
              board_id: str | None = None, overrides: Overrides | None = None) -> Calibration:
    """Run the device-side benchmark with the plan's decode threads, store its measurements against
    the read rate a plan of this device would use, return them. TargetError when it fails."""
    from toolchain.plan.basis import build_basis
    from toolchain.plan.boards import load_boards, lookup_board

    board = lookup_board(load_boards(), board_id) if board_id else None
    basis, _, threads = build_basis(facts, board, overrides or Overrides(), records=[])
    bandwidth_bytes_per_s = basis.bandwidth_bytes_per_s
    start = time.monotonic()
    here = Path(__file__).resolve().parent.parent / "device"
    remote = f"{root}/calibration"
    transport.run(["sh", "-c", 'rm -rf "$1/work" "$1/results.jsonl" && mkdir -p "$1"', "sh", remote], timeout=60)
    for name in DEVICE_FILES:
        transport.put(here / name, f"{remote}/{name}")
    events.step(f"calibrating on first contact: llama.cpp decode on the device, {threads} thread(s)")
    res = transport.run([python, f"{remote}/calibrate.py", "--out", f"{remote}/results.jsonl", "--work", f"{remote}/work",
                         "--threads", str(threads)], timeout=TIMEOUT_S, check=False)
    local = local_dir / "calibration.jsonl"
    try:
        transport.get(f"{remote}/results.jsonl", local, max_bytes=MAX_RESULTS_BYTES)
    except (TargetError, OSError):
        local.write_text("")
    results, wall, load = parse_results(local.read_text(errors="replace"))
    if res.exit_status != 0 or not results:
        raise TargetError(f"calibration on {facts.target} failed (exit {res.exit_status})"
                          + (f": {res.tail().splitlines()[-1]}" if res.tail() else ""),
                          "the device could not write or run the calibration models; ship with --no-calibrate to plan on class defaults")
    now = datetime.now(UTC)
    fp = calibration.fingerprint(facts)
    records = [DeviceMeasurement(fingerprint=fp, measured_at=now, model=r["model"], quant=r["family"],
                                 measured_decode_s=r["decode_s"], bytes_per_token=r["bytes_per_token"],
                                 bandwidth_bytes_per_s=bandwidth_bytes_per_s, threads=r["threads"], ctx=r["ctx"],
                                 family=r["family"], bytes_by_type=dict(r["bytes_by_type"]),
                                 # a tiny model's layers sit in cache and cost ~1/3 of layers read from
                                 # memory: stored without a layer count, its time tells the fixed overhead
                                 n_layer=0 if _tiny_name(r["model"]) else r["n_layer"],
                                 rows_per_token=r["rows_per_token"],
                                 origin="calibration") for r in results]
    calibration.record_calibration(records)
    total = time.monotonic() - start
    rates = [f"{r.quant}{f' {r.n_layer} layers' if r.model.endswith('deep') else ''} {r.bytes_per_token / r.measured_decode_s / 1e9:.1f} GB/s"
             for r in records if not _tiny(r)]
    fixed = [f"tiny model {r.measured_decode_s * 1000:.2f} ms" for r in records if _tiny(r)]
    events.log(f"  calibrated in {wall:.1f} s on the device ({total:.1f} s in all): {', '.join(rates + fixed)}")
    if load > threads + 1.0:  # its own decode threads count ~threads; more is other work
        events.log(f"  warning: the device was busy while it was calibrated (load average {load:.1f} with {threads} decode "
                   f"thread(s)); its figures may be low: `edgedeploy probe --calibrate` on a quiet device measures again")
    return Calibration(records, wall, total)


def _tiny(r: DeviceMeasurement) -> bool:
    return _tiny_name(r.model)


def _tiny_name(model: str) -> bool:
    return model.endswith("l")  # calibration-F16-2l: the fixed-cost model


def parse_results(text: str) -> tuple[list[CalibrationResult], float, float]:
    """The device's JSON lines: measured models (checked: types, finite positive numbers), the wall
    time and the highest load average seen around it."""
    out: list[CalibrationResult] = []
    wall = busy = 0.0
    for line in text.splitlines()[:1000]:
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        if doc.get("done") is True and isinstance(doc.get("wall_s"), (int, float)):
            wall = float(doc["wall_s"])
            loads = [float(v) for k in ("load_before", "load_after") if isinstance(v := doc.get(k), (int, float)) and math.isfinite(v)]
            busy = max(loads, default=0.0)
            continue
        r = typed_dict_from(CalibrationResult, doc)
        if r is None or not _sane(r):
            continue
        out.append(r)
    return out, wall, busy


def _sane(r: CalibrationResult) -> bool:
    numbers = [r["decode_s"], float(r["bytes_per_token"]), float(r["n_layer"]), float(r["threads"]), float(r["ctx"]),
               float(r["rows_per_token"])]
    return (all(math.isfinite(v) and v > 0 for v in numbers) and r["n_layer"] <= 4096
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r["bytes_by_type"].values())
            and r["family"] in ("Q4_K", "Q6_K", "Q8_0", "Q4_0", "F16"))
