"""Measured vs predicted vs budget -> Verdict (pure)."""

from __future__ import annotations

from dataclasses import replace

from toolchain.core.nouns import Budget, Check, Placement, Selected, Telemetry, Verdict

PREDICTION_TOLERANCE = 0.25  # relative; beyond this the prediction check warns


def validate(
    tel: Telemetry, sel: Selected, budget: Budget, *, usable_memory_bytes: int, shipped_sha256: str,
    tolerance: float = PREDICTION_TOLERANCE, strict_prediction: bool = False,
) -> Verdict:
    decode_ms = 1000.0 / tel.decode_tokens_per_s if tel.decode_tokens_per_s > 0 else float("inf")
    checks = [
        Check("telemetry measured", tel.decode_tokens_per_s > 0 and tel.peak_rss_bytes > 0,
              f"{tel.decode_tokens_per_s:.2f} tok/s, {tel.peak_rss_bytes} B", "> 0"),
        Check("model integrity", tel.model_sha256 == shipped_sha256, tel.model_sha256, shipped_sha256,
              "sha256 of the file the runner loaded vs the shipped file"),
        Check("decode budget", decode_ms <= budget.decode_ms_per_token, round(decode_ms, 3), budget.decode_ms_per_token,
              "mean decode ms/token"),
        Check("fits memory", tel.peak_rss_bytes <= usable_memory_bytes, tel.peak_rss_bytes, usable_memory_bytes,
              "peak RSS (VmHWM) vs usable memory"),
    ]
    checks.append(placement_check(sel.placement, tel))
    if sel.placement.offloaded and sel.placement.device_budget_bytes is not None:
        checks.append(Check("fits device memory", tel.device_memory_bytes <= sel.placement.device_budget_bytes, tel.device_memory_bytes,
                            sel.placement.device_budget_bytes, f"llama.cpp's buffers on {tel.device or sel.placement.device} vs its free memory"))
    if budget.ttft_ms is not None:
        checks.append(Check("time to first token", tel.ttft_s * 1000.0 <= budget.ttft_ms, round(tel.ttft_s * 1000.0, 1), budget.ttft_ms))
    pred = sel.predicted
    sev = "error" if strict_prediction else "warning"
    # the prediction is of a steady decode: judged on the median-based rate (a stall or two from
    # another process on the board moves the mean, not the median); the budget stays on the mean
    measured = tel.median_decode_tokens_per_s
    dec_err = abs(pred.decode_tokens_per_s - measured) / measured if measured else 1.0
    # The bench's VmHWM is compared with what the bench should show, not the full-context peak
    # that decides fitting (older plans carry only the latter).
    expected_rss = pred.bench_rss_bytes or pred.peak_memory_bytes
    mem_err = abs(expected_rss - tel.peak_rss_bytes) / tel.peak_rss_bytes if tel.peak_rss_bytes else 1.0
    lo, hi = pred.decode_tokens_per_s_low, pred.decode_tokens_per_s_high
    if 0 < lo <= hi:  # the plan said how sure it was: the measurement must fall inside its interval
        inside = lo <= measured <= hi
        checks.append(Check("prediction decode", inside, round(measured, 3), f"{lo:.2f}-{hi:.2f}",
                            f"measured (median-based) vs predicted {pred.decode_tokens_per_s:.2f} tok/s: {dec_err:.0%} off, "
                            f"{'inside' if inside else 'outside'} the predicted interval", sev))
    else:  # a plan written before predictions carried an interval
        checks.append(Check("prediction decode", dec_err <= tolerance, round(measured, 3), round(pred.decode_tokens_per_s, 3),
                            f"measured (median-based) vs predicted tok/s: {dec_err:.0%} off (tolerance {tolerance:.0%})", sev))
    checks.append(Check("prediction memory", mem_err <= tolerance, tel.peak_rss_bytes, expected_rss,
                        f"measured vs predicted peak bytes: {mem_err:.0%} off (tolerance {tolerance:.0%})", sev))
    busy = tel.busy()
    if busy:
        # A measurement of the model and of whatever else ran: a miss the other work can explain
        # (it took at most `slack` x the time) fails neither the budget nor the prediction; a
        # 20x miss is a miss however busy the board was. (The pipeline has measured once more.)
        slack = tel.busy_slowdown()
        lo = pred.decode_tokens_per_s_low or pred.decode_tokens_per_s * (1 - tolerance)

        def explained(c: Check) -> bool:
            if c.name == "prediction decode":
                return measured < lo and measured * slack >= lo  # slower than expected, by no more than the load
            return isinstance(c.observed, float) and isinstance(c.limit, float) and c.observed <= c.limit * slack

        checks = [replace(c, severity="warning", detail=f"{c.detail}; the board was busy during the measurement ({busy})")
                  if not c.passed and c.name in NOISE_SENSITIVE and explained(c) else c for c in checks]
    checks.append(Check("quiet board", busy is None, busy or ("quiet" if tel.bench_wall_s > 0 else "not measured by this runner"), "no other load",
                        "CPU time of other processes, steal and throttling during the timed part", "warning"))
    return Verdict(passed=all(c.passed for c in checks if c.severity == "error"), checks=checks)


def placement_check(p: Placement, tel: Telemetry) -> Check:
    """The planned placement against what llama.cpp's load log says ran: a GPU plan run on the CPU
    (or the reverse) is a failure, never a pass beside a CPU speed."""
    ran = tel.gpu_layers_offloaded
    planned = p.n_gpu_layers()
    where = p.backend.upper() if p.backend in ("cuda", "opencl") else p.backend.capitalize()
    if not p.offloaded:
        ok = ran == 0
        detail = "planned on the CPU" + ("" if ok else f", but llama.cpp offloaded {ran} layers to {tel.device or tel.backend}")
        return Check("placement", ok, f"{ran} layers offloaded", "0 (CPU)", detail)
    # llama.cpp counts the output layer: all of a 30-layer model is "31/31"
    ok = tel.backend == p.backend and ran == planned
    detail = f"planned {p.gpu_layers} of {p.n_layer} layers on {where}{f' ({p.device})' if p.device else ''}, {ran} offloaded"
    if ran == 0:
        detail += f": the runtime is CPU-only (llama-cpp-python built without {p.backend})" if tel.backend == "cpu" else ""
    elif tel.backend != p.backend:
        detail += f", to {tel.device or tel.backend} ({tel.backend}, not {p.backend})"
    elif tel.device:
        detail += f" on {tel.device}"
    return Check("placement", ok, f"{ran} layers on {tel.backend}", f"{planned} on {p.backend}", detail)


NOISE_SENSITIVE = ("decode budget", "prediction decode", "time to first token")


def missed_on_noise(verdict: Verdict, tel: Telemetry) -> bool:
    """A busy board and a timing check missed: worth measuring once more."""
    return tel.busy() is not None and any(not c.passed and c.name in NOISE_SENSITIVE for c in verdict.checks)


def failed_run_verdict(reason: str) -> Verdict:
    return Verdict(passed=False, checks=[Check("runner completed", False, reason, "exit 0 with a result")])
