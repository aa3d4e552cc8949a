"""First contact on this machine: the prediction of a device's first plan against what it measures.

    .venv/bin/python bench/first_contact.py [--rounds 1]

`edgedeploy probe --calibrate local` runs the first-contact calibration once (its wall time is
printed) into a fresh data directory. Then, for SmolLM2-135M Q4_1, Q8_0, F16 and Gemma 3 270M
Q4_K_M, `ship --target local --model FILE --json` runs twice, each time from a fresh data
directory: once holding only that calibration (the first plan of a calibrated device) and once
empty with --no-calibrate (class defaults, as before calibration existed). Printed per model:
predicted tok/s, the interval, measured tok/s (median-based: 1000 / decode p50; and the mean),
and the error of the median-based rate; then the median and worst error of each side, and how many
measurements fall inside their interval. Goals (issue 12a): median error <= 10 %, worst <= 20 %.
The load average is printed: on a busy machine both sides move.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolchain.models.catalog import load_catalog  # noqa: E402
from toolchain.models.requantize import requantize  # noqa: E402
from toolchain.models.sources import cached_path, obtain  # noqa: E402

MODELS = (("smollm2-135m-instruct", "Q4_1"), ("smollm2-135m-instruct", "Q8_0"), ("smollm2-135m-instruct", "F16"),
          ("gemma-3-270m-it", "Q4_K_M"))
EXE = str(REPO / ".venv" / "bin" / "edgedeploy")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=1800)


def ship(home: Path, model: Path, deploy: Path, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "EDGEDEPLOY_HOME": str(home), "EDGEDEPLOY_CALIBRATE": "0"}
    proc = run(env, "ship", "--target", "local", "--model", str(model), "--deploy-dir", str(deploy), "--json", *extra)
    if not proc.stdout.strip():
        raise SystemExit(f"ship {model.name} printed nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def local_file(catalog: dict[str, Any], model_id: str, quant: str) -> Path:
    """The GGUF from the offline wheels, or derived from SmolLM2's Q4_1 with llama.cpp's quantizer (no hub here)."""
    dest = cached_path(model_id, quant)
    if not dest.exists() and model_id == "smollm2-135m-instruct" and quant != "Q4_1":
        requantize(obtain(catalog[model_id], "Q4_1"), dest, quant)
    return obtain(catalog[model_id], quant, offline=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1, help="ships per model and side (the median is kept)")
    args = ap.parse_args()
    catalog = load_catalog()
    files = [(f"{m} {q}", local_file(catalog, m, q)) for m, q in MODELS]
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="first-contact-") as tmp:
        base = Path(tmp)
        calibrated = base / "calibrated"
        start = time.monotonic()
        proc = run({**os.environ, "EDGEDEPLOY_HOME": str(calibrated)}, "probe", "--calibrate", "local", "--deploy-dir",
                   str(base / "deploy-cal"))
        took = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"probe --calibrate failed:\n{proc.stderr[-3000:]}")
        line = next((ln for ln in proc.stderr.splitlines() if "calibrated in" in ln), "")
        print(f"calibration: {took:.1f} s for `probe --calibrate local` in all; {line.strip()}")
        rows = []
        for label, path in files:
            sides: dict[str, list[dict[str, Any]]] = {"calibrated": [], "defaults": []}
            for r in range(args.rounds):
                for side in sides:
                    home = base / f"{side}-{label.replace(' ', '-')}-{r}"
                    if side == "calibrated":
                        shutil.copytree(calibrated, home, ignore=shutil.ignore_patterns("runs"))
                    extra = () if side == "calibrated" else ("--no-calibrate",)
                    sides[side].append(ship(home, path, base / f"deploy-{side}", *extra))
                    loads.append(os.getloadavg()[0])
            rows.append((label, sides))
    print(f"\n{'model':<28} {'side':<11} {'predicted':>9} {'interval':>15} {'measured p50':>12} {'mean':>7} {'error':>7}")
    errors: dict[str, list[float]] = {"calibrated": [], "defaults": []}
    inside: dict[str, int] = {"calibrated": 0, "defaults": 0}
    for label, sides in rows:
        for side, docs in sides.items():
            preds, meas, means, lo, hi = [], [], [], 0.0, 0.0
            for d in docs:
                if not d.get("telemetry") or not d.get("plan", {}).get("selected"):
                    print(f"{label:<28} {side:<11} no measurement: {d.get('error') or d.get('failure')}")
                    continue
                p = d["plan"]["selected"]["predicted"]
                t = d["telemetry"]
                preds.append(p["decode_tokens_per_s"])
                lo, hi = p.get("decode_tokens_per_s_low", 0.0), p.get("decode_tokens_per_s_high", 0.0)
                meas.append(1000.0 / t["decode_ms_p50"])
                means.append(t["decode_tokens_per_s"])
            if not meas:
                continue
            pred, m = statistics.median(preds), statistics.median(meas)
            err = (pred - m) / m
            errors[side].append(abs(err))
            inside[side] += lo <= m <= hi
            print(f"{label:<28} {side:<11} {pred:>9.1f} {f'{lo:.1f}-{hi:.1f}':>15} {m:>12.1f} {statistics.median(means):>7.1f} {err:>+7.0%}")
    print()
    for side, errs in errors.items():
        if errs:
            print(f"{side:<11} median |error| {statistics.median(errs):.0%}, worst {max(errs):.0%}, "
                  f"{inside[side]} of {len(errs)} inside their interval")
    print("goal (calibrated): median <= 10%, worst <= 20%")
    print(f"load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores during the runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
