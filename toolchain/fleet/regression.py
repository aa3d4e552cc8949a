"""Is a board's decode speed down by more than its own noise? (pure)

A drop counts as a regression when it exceeds max(5 % of the baseline, 3 standard deviations of
the board's recent runs): a quiet board is held to 5 %, a noisy one only to what its noise allows,
so CI does not cry wolf on a board that always wobbles.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

MIN_DROP = 0.05
SIGMAS = 3.0
BASELINE_RUNS = 10  # recent behaviour: old firmware and kernels age out


@dataclass(frozen=True)
class RegressionCheck:
    regressed: bool
    measured_tokens_per_s: float
    baseline_tokens_per_s: float
    stdev_tokens_per_s: float
    threshold_tokens_per_s: float
    runs: int

    @property
    def drop(self) -> float:
        return (self.baseline_tokens_per_s - self.measured_tokens_per_s) / self.baseline_tokens_per_s

    def describe(self) -> str:
        return (f"{self.measured_tokens_per_s:.2f} tok/s vs {self.baseline_tokens_per_s:.2f} ± {self.stdev_tokens_per_s:.2f} "
                f"over the last {self.runs} run(s): {self.drop:+.1%} drop "
                f"(allowed {self.threshold_tokens_per_s / self.baseline_tokens_per_s:.1%} = max({MIN_DROP:.0%}, {SIGMAS:g} sd))")


def check_regression(measured_tokens_per_s: float, baseline: list[float]) -> RegressionCheck | None:
    """baseline: the board's recent passing runs (same model and quant); None without any."""
    runs = [x for x in baseline[:BASELINE_RUNS] if x > 0]
    if not runs:
        return None
    mean = statistics.fmean(runs)
    sd = statistics.stdev(runs) if len(runs) >= 2 else 0.0
    threshold = max(MIN_DROP * mean, SIGMAS * sd)
    return RegressionCheck(regressed=mean - measured_tokens_per_s > threshold, measured_tokens_per_s=measured_tokens_per_s,
                           baseline_tokens_per_s=mean, stdev_tokens_per_s=sd, threshold_tokens_per_s=threshold, runs=len(runs))
