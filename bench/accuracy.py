"""How close the planner's predictions come to what this machine measures.

    .venv/bin/python bench/accuracy.py            # the full ladder (~10 min on 2 cores)
    .venv/bin/python bench/accuracy.py --quick    # fewer models, for iteration

For every model of the ladder it predicts (the planner's own code path: catalog entry from the
GGUF, basis from a probe of this machine), then measures by running the real runner: the plan is
packaged as `ship` does (toolchain/device/runner.py: n_batch 512, threads = recommended, ctx as
planned, mmap, its prompts, a warm-up, greedy decode of 48 tokens per prompt) and its bench mode
runs in a fresh process: decode speed and peak RSS (VmHWM). Decode is the median per-token
latency of the best of --repeat runs (this 2-core VM is shared with other work: medians resist
interference; the runner's mean is kept in --json). A second process measures the resident need
(what a memory limit must hold) for the false-fit count.

Calibration is honest: the device fit (calibration.fit_device, the code a device's stored
measurements go through before its next plan) is made leave-one-out: each model is predicted
from the measurements of the other models only. The uncalibrated prediction (defaults for
the device class) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolchain.core.nouns import Budget, HostFacts  # noqa: E402
from toolchain.models.catalog import entry_from_gguf, load_catalog  # noqa: E402
from toolchain.plan import calibration  # noqa: E402
from toolchain.plan.basis import Overrides, build_basis  # noqa: E402
from toolchain.plan.select import Option, PlanOptions, make_plan  # noqa: E402

SMOL_LADDER = ("Q4_1", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K", "F16")
SYNTH_QUANTS = ("F16", "Q8_0", "Q4_K_M", "Q4_0")
CTX = 4096

# --- measuring: the real runner, then the resident need -----------------------------------

# The resident need: load with the runner's settings, decode, drop the model file's pages
# (MADV_PAGEOUT, Linux 5.4+), decode again and count the pages that come back (the weights decode
# reads) plus anonymous memory. Pages of tensors CPU_REPACK copied are never read again and stay
# out: the kernel can drop them, so they are no part of what a plan must fit.
NEED_CHILD = r"""
import ctypes, json, os, sys
import llama_cpp, numpy as np
path, ctx, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, n_ubatch=512,
                      use_mmap=True, swa_full=False, verbose=False)
n_vocab = llm.n_vocab()
def run(n):
    llm.reset(); llm.eval(llm.tokenize(b"Explain in two sentences why the sky is blue.", add_bos=True))
    for _ in range(n):
        llm.eval([int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))])
run(8)
real = os.path.realpath(path)
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
with open("/proc/self/maps") as f:
    for line in f:
        if line.rstrip().endswith(real):
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            libc.madvise(a, b - a, 21)
run(8)
ws, anon, in_map = 0, 0, False
with open("/proc/self/smaps") as f:
    for line in f:
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            in_map = line.rstrip().endswith(real)
        elif in_map and head[0] == "Rss:":
            ws += int(head[1]) * 1024
with open("/proc/self/status") as f:
    anon = next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))
print(json.dumps({"resident_need_bytes": anon + ws, "weights_working_set": ws, "rss_anon": anon}))
"""


def cpu_pressure() -> float:
    """Share of the last 10 s some task waited for a CPU (Linux PSI; 0 when unavailable)."""
    try:
        return float(Path("/proc/pressure/cpu").read_text().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return 0.0


def wait_quiet(limit_s: float, threshold: float = 10.0) -> float:
    """Other tenants' work slows decode on a 2-core VM by up to 10x: wait (bounded) for calm."""
    end = time.monotonic() + limit_s
    while cpu_pressure() > threshold and time.monotonic() < end:
        time.sleep(2.0)
    return cpu_pressure()


def run_runner(sel: Any, gguf: Path, work: Path) -> dict[str, Any]:
    """Package the plan exactly as `ship` does and run the rendered runner's bench mode."""
    from toolchain.core.nouns import Basis, Plan
    from toolchain.deploy.package import package
    from toolchain.deploy.pipeline import cached_sha256

    plan = Plan(selected=sel, candidates=[], basis=Basis(0, 0.0, 0.0), budget=Budget(decode_ms_per_token=1e9))
    bundle = package(plan, gguf, work / "bundle", python=sys.executable, model_sha256=cached_sha256(gguf))
    out = work / "telemetry.jsonl"
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(Path(bundle.root) / "runner.py"), "bench", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    events = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    result = next((e for e in reversed(events) if e.get("event") == "result"), None)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{gguf}: runner failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return result


def noisy(meas: dict[str, Any]) -> bool:
    """A run other work disturbed: its mean decode speed far below its median, or the CPU busy
    (PSI) when it ended. On a quiet machine the mean is within a few percent of the median."""
    return bool(meas["mean_tps"] < 0.85 / meas["median_s"] or meas["cpu_pressure"][1] > 15.0)


def measure(sel: Any, gguf: Path, repeat: int, quiet_s: float, work: Path) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        pressure = wait_quiet(quiet_s)
        r = run_runner(sel, gguf, work)
        lat = sorted(r["latencies_ms"])
        runs.append({"median_s": lat[len(lat) // 2] / 1000.0, "mean_tps": r["decode_tokens_per_s"],
                     "peak_rss_bytes": r["peak_rss_bytes"], "prefill_tps": r["prefill_tokens_per_s"],
                     "tokens": len(lat), "cpu_pressure": [pressure, cpu_pressure()]})
    best = dict(min(runs, key=lambda r: r["median_s"]))  # interference only ever slows a run down
    best["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    best["runs"] = [dict(r) for r in runs]
    proc = subprocess.run([sys.executable, "-c", NEED_CHILD, str(gguf), str(sel.ctx), str(sel.threads)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        best.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return best


# --- the ladder -----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: Path
    pred: Any = None  # Prediction, default basis
    meas: dict[str, Any] | None = None


def ladder(quick: bool, log: Any) -> list[Case]:
    from toolchain.models import synthetic
    from toolchain.models.requantize import requantize
    from toolchain.models.sources import cached_path, obtain

    cat = load_catalog()
    smol = cat["smollm2-135m-instruct"]
    src = obtain(smol, "Q4_1", log=log)
    cases = []
    for q in (("Q4_1", "Q8_0", "F16") if quick else SMOL_LADDER):
        dest = cached_path(smol.id, q)
        if not dest.exists():
            requantize(src, dest, q)
        cases.append(Case(f"smollm2-135m {q}", dest))
    cases.append(Case("gemma-3-270m Q4_K_M", obtain(cat["gemma-3-270m-it"], "Q4_K_M", log=log)))
    synth = [("synth-llama-0.5b", ("Q8_0", "Q4_0")), ("synth-llama-1b", ("Q4_K_M",))] if quick else \
        [(n, SYNTH_QUANTS) for n in ("synth-llama-0.5b", "synth-llama-1b", "synth-llama-3b")]
    for name, quants in synth:
        for q in quants:
            cases.append(Case(f"{name} {q}", synthetic.ensure(name, q, log=log)))
    return cases


def local_facts() -> HostFacts:
    from toolchain.core.nouns import TargetSpec
    from toolchain.probe import probe
    from toolchain.transports.local import LocalTransport

    spec = TargetSpec(name="local", kind="local", python=sys.executable)
    with LocalTransport() as t:
        return probe(t, spec, deploy_dir=str(Path.home()))


def predict(path: Path, facts: HostFacts, records: list[calibration.DeviceMeasurement]) -> Any:
    entry = entry_from_gguf(path)
    q = next(iter(entry.quants))
    basis, speed, threads = build_basis(facts, None, Overrides(), records=records)
    opts = PlanOptions(ctx=CTX, threads=threads, kv_types=("f16",))
    plan = make_plan([Option(entry, q, entry.quants[q].file_bytes, "local file", entry.local)], basis, speed,
                     Budget(decode_ms_per_token=1e9), opts)
    assert plan.selected is not None, plan.nearest_miss
    return plan.selected


def record_of(case: Case, facts: HostFacts) -> calibration.DeviceMeasurement:
    """The measurement as a shipped run stores it (case.pred is on the default basis already)."""
    assert case.meas is not None and case.pred is not None
    p = case.pred.predicted
    return calibration.DeviceMeasurement(
        fingerprint=calibration.fingerprint(facts), measured_at=datetime.now(UTC), model=case.name, quant=case.pred.quant,
        threads=case.pred.threads, ctx=case.pred.ctx, predicted_decode_s=p.decode_ms_per_token / 1000.0,
        measured_decode_s=case.meas["median_s"], bytes_per_token=p.bytes_per_token,
        bandwidth_bytes_per_s=facts.bandwidth.read_bytes_per_s or 0.0, family=p.kernel_family, bytes_by_type=p.bytes_by_type,
        measured_peak_bytes=case.meas["peak_rss_bytes"], predicted_peak_bytes=p.bench_rss_bytes)


def err(pred: float, meas: float) -> float:
    return (pred - meas) / meas


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer models (iteration)")
    ap.add_argument("--repeat", type=int, default=2, help="measuring runs per model (best median kept)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--reuse", type=Path, help="reuse measurements from an earlier --json (re-predict only)")
    ap.add_argument("--remeasure-noisy", action="store_true",
                    help="with --reuse: measure again the models whose best run was disturbed (see noisy())")
    ap.add_argument("--quiet-s", type=float, default=60.0, help="wait up to this long for a calm CPU before each run")
    args = ap.parse_args()
    t_start = time.monotonic()
    log = lambda m: print(f"  {m}", file=sys.stderr)

    print("== class defaults on published devices (leave-one-device-out): bench/published_lodo.py")

    facts = local_facts()
    threads = facts.cpu.recommended_threads
    print(f"== this machine: {facts.cpu.model_name}, {facts.cpu.cores} cores, threads {threads}, "
          f"read bandwidth {facts.bandwidth.read_bytes_per_s / 1e9:.1f} GB/s ({facts.bandwidth.method}), ctx {CTX}")
    cases = ladder(args.quick, log)
    reused = json.loads(args.reuse.read_text()) if args.reuse else {}
    for c in cases:
        c.pred = predict(c.path, facts, [])
        old = reused.get("measured", {}).get(c.name)
        if old is not None and not (args.remeasure_noisy and noisy(old)):
            c.meas = old
            continue
        log(f"measuring {c.name}")
        with tempfile.TemporaryDirectory(prefix="edgedeploy-accuracy-") as tmp:
            c.meas = measure(c.pred, c.path, args.repeat, args.quiet_s, Path(tmp))

    recs = [record_of(c, facts) for c in cases]
    rows = []
    for i, c in enumerate(cases):
        assert c.meas is not None
        loo = predict(c.path, facts, recs[:i] + recs[i + 1:])
        m_tps = 1.0 / c.meas["median_s"]
        m_rss = c.meas["peak_rss_bytes"]
        rows.append({
            "model": c.name, "measured_tps": m_tps, "default_tps": c.pred.predicted.decode_tokens_per_s,
            "loo_tps": loo.predicted.decode_tokens_per_s, "measured_rss": m_rss,
            "predicted_rss": c.pred.predicted.bench_rss_bytes, "loo_rss": loo.predicted.bench_rss_bytes,
            "predicted_peak": c.pred.predicted.peak_memory_bytes,
            "measured_need": c.meas.get("resident_need_bytes", m_rss),
            "file_bytes": c.path.stat().st_size,
        })

    print("\n== decode tokens/s and peak RSS (VmHWM), measured vs predicted")
    print(f"{'model':<26} {'meas t/s':>9} {'default':>8} {'err':>7} {'LOO':>8} {'err':>7} | "
          f"{'meas MiB':>9} {'pred MiB':>9} {'err':>7} {'LOO MiB':>8} {'err':>7} | {'need MiB':>9} {'plan MiB':>9}")
    for r in rows:
        print(f"{r['model']:<26} {r['measured_tps']:9.2f} {r['default_tps']:8.2f} {err(r['default_tps'], r['measured_tps']):+7.1%} "
              f"{r['loo_tps']:8.2f} {err(r['loo_tps'], r['measured_tps']):+7.1%} | {r['measured_rss'] / 2**20:9.1f} "
              f"{r['predicted_rss'] / 2**20:9.1f} {err(r['predicted_rss'], r['measured_rss']):+7.1%} "
              f"{r['loo_rss'] / 2**20:8.1f} {err(r['loo_rss'], r['measured_rss']):+7.1%} | {r['measured_need'] / 2**20:9.1f} "
              f"{r['predicted_peak'] / 2**20:9.1f}")

    def summary(key: str, mkey: str) -> str:
        e = [abs(err(r[key], r[mkey])) for r in rows]
        return f"median |err| {statistics.median(e):6.1%}   worst {max(e):6.1%}"

    false_fits = [r["model"] for r in rows if r["measured_need"] > r["predicted_peak"]]
    false_bench = [r["model"] for r in rows if r["measured_rss"] > r["loo_rss"] * 1.02]
    print("\n== summary over", len(rows), "models (goals: decode <= 10%, memory <= 5%, zero false fits)")
    print(f"  decode tok/s, leave-one-out device fit : {summary('loo_tps', 'measured_tps')}")
    print(f"  decode tok/s, class defaults (no fit)  : {summary('default_tps', 'measured_tps')}")
    print(f"  peak RSS, model (no fit)               : {summary('predicted_rss', 'measured_rss')}")
    print(f"  peak RSS, leave-one-out offset fit     : {summary('loo_rss', 'measured_rss')}")
    print(f"  false fits (measured resident need above the peak the plan budgets): {len(false_fits)}"
          + (f" {false_fits}" if false_fits else ""))
    margin = [r["predicted_peak"] / r["measured_need"] - 1 for r in rows]
    print(f"  plan peak over measured resident need: median {statistics.median(margin):+.1%}, smallest {min(margin):+.1%}")
    print(f"  bench-depth RSS under-predicted by > 2%: {len(false_bench)}" + (f" {false_bench}" if false_bench else ""))
    print("  how: LOO = calibration.fit_device on the other models' measurements (efficiency, per-token overhead,\n"
          "  per-family factors, RSS offset), then the planner predicts the held-out model. 'need' is measured:\n"
          "  anonymous memory plus the model pages decode faults back in after MADV_PAGEOUT; 'plan' is the\n"
          f"  plan's peak at full context ({CTX}) with a full 512-token batch, which decides fits.")
    print(f"  bench wall time {time.monotonic() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "measured": {c.name: c.meas for c in cases}}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
