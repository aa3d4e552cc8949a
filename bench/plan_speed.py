"""Wall time of a plan against the CLI's start-up (goal: plan median <= 3x the start-up median).

    .venv/bin/python bench/plan_speed.py [--runs 7] [--board rpi5-8gb] [--budget 120ms] [--cold]

Makes sure the GGUFs that made planning slow are in the model cache (Gemma 3 270M Q4_K_M with its
262k-token vocabulary, SmolLM2-135M Q4_1/Q8_0/F16; fetched once through models.sources.obtain),
then times, alternating so that load changes hit both alike:
  startup  `edgedeploy --version`: the interpreter starting and importing the CLI.
  plan     `edgedeploy plan --board BOARD --budget BUDGET`: every cached GGUF is a candidate.
Both run as a user runs them (a subprocess of .venv/bin/edgedeploy) with a private EDGEDEPLOY_HOME.
The GGUF tensor tables come from the reader's cache ($EDGEDEPLOY_CACHE/gguf-index), as they do for
every plan after the first; --cold removes that index before every plan run to time the reader too.
Prints every run, the medians, the ratio, and the load average (a busy machine inflates both).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolchain.core.paths import cache_dir  # noqa: E402
from toolchain.models.catalog import load_catalog  # noqa: E402
from toolchain.models.sources import obtain  # noqa: E402

GOAL_RATIO = 3.0
MODELS = (("gemma-3-270m-it", "Q4_K_M"), ("smollm2-135m-instruct", "Q4_1"), ("smollm2-135m-instruct", "Q8_0"),
          ("smollm2-135m-instruct", "F16"))


def ensure_models() -> list[Path]:
    catalog = load_catalog()
    return [obtain(catalog[mid], quant, log=lambda m: print(f"  {m}", flush=True)) for mid, quant in MODELS]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--board", default="rpi5-8gb")
    ap.add_argument("--budget", default="120ms")
    ap.add_argument("--cold", action="store_true", help="remove the GGUF header index before every plan run")
    args = ap.parse_args()

    print("models in the cache:", flush=True)
    for path in ensure_models():
        print(f"  {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    index = cache_dir() / "gguf-index"
    exe = str(REPO / ".venv" / "bin" / "edgedeploy")
    startup_argv = [exe, "--version"]
    plan_argv = [exe, "plan", "--board", args.board, "--budget", args.budget]
    times: dict[str, list[float]] = {"startup": [], "plan": []}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="plan-speed-") as tmp:
        env = {**os.environ, "EDGEDEPLOY_HOME": str(Path(tmp) / "home"), "COLUMNS": "160"}
        timed(startup_argv, env)  # warm-up: page cache, .pyc files, the header index
        timed(plan_argv, env)
        for i in range(args.runs):
            loads.append(os.getloadavg()[0])
            times["startup"].append(timed(startup_argv, env))
            if args.cold:
                shutil.rmtree(index, ignore_errors=True)
            times["plan"].append(timed(plan_argv, env))
            print(f"run {i + 1}: startup {times['startup'][-1]:.3f} s  plan {times['plan'][-1]:.3f} s", flush=True)

    cores = os.cpu_count() or 1
    load = statistics.median(loads)
    print(f"`{' '.join(plan_argv[1:])}` vs `edgedeploy --version`, {args.runs} runs alternating"
          f"{', header index removed before each plan' if args.cold else ''}")
    for name, values in times.items():
        print(f"median {name:7s} {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")
    ratio = statistics.median(times["plan"]) / statistics.median(times["startup"])
    verdict = "ok" if ratio <= GOAL_RATIO else f"over the {GOAL_RATIO:g}x goal"
    print(f"ratio plan/startup {ratio:.2f}x ({verdict})")
    busy = load > 0.5 * cores
    print(f"load average {load:.2f} on {cores} cores during the runs" + (": the machine was busy, figures are inflated" if busy else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
