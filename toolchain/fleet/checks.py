"""Per-board checks as CI shows them: one JUnit test case each (pure).

reachable, deployed and ran, fits memory, meets the decode budget, meets the TTFT budget (when
set), prediction within tolerance, no decode regression. Outcomes follow JUnit: `error` when the
harness could not judge (infrastructure, configuration), `failed` when the board was judged and
missed, `skipped` when an earlier failure left nothing to judge, `warning` when a non-strict check
missed (a JUnit pass whose output says so; the HTML report draws it as a miss).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.core.errors import FailureClass
from toolchain.core.nouns import Check
from toolchain.fleet.scheduler import BoardOutcome

REACHABLE, DEPLOYED, FITS, DECODE, TTFT, PREDICTION, REGRESSION = (
    "reachable", "deployed and ran", "fits memory", "meets the decode budget", "meets the TTFT budget",
    "prediction within tolerance", "no decode regression")


@dataclass(frozen=True)
class LabCheck:
    name: str
    outcome: str  # passed | failed | error | skipped | warning (judged and missed, not failing CI)
    message: str
    detail: str = ""


def board_checks(o: BoardOutcome, *, ttft_budget: bool, probe_only: bool) -> list[LabCheck]:
    report = o.report
    verdict = {c.name: c for c in report.verdict.checks} if report else {}
    tel = report.telemetry if report else None
    later = [DEPLOYED, FITS, DECODE, *([TTFT] if ttft_budget else []), PREDICTION, REGRESSION]
    if not o.reached:
        return [LabCheck(REACHABLE, "error", o.error or "board did not answer", o.hint or ""),
                *([] if probe_only else [LabCheck(n, "skipped", "board unreachable") for n in later])]
    checks = [LabCheck(REACHABLE, "passed", "answered over its transport")]
    if probe_only:
        if o.failure is not None:
            checks.append(LabCheck("probed", "error", o.error or o.status, o.hint or ""))
        return checks
    if tel is None:
        return checks + _not_run(o, later, verdict)
    ran_ok = all(verdict[n].passed for n in ("telemetry measured", "model integrity") if n in verdict)
    sel = report.plan.selected if report and report.plan else None
    checks.append(LabCheck(DEPLOYED, "passed" if ran_ok else "failed", f"ran {sel.model if sel else None} {sel.quant if sel else None} on the board",
                           _detail(verdict, "model integrity")))
    checks.append(_from_verdict(verdict, "fits memory", FITS))
    checks.append(_from_verdict(verdict, "decode budget", DECODE))
    if ttft_budget:
        checks.append(_from_verdict(verdict, "time to first token", TTFT))
    checks.append(_prediction(verdict))
    checks.append(_regression(o))
    return checks


def _not_run(o: BoardOutcome, later: list[str], verdict: dict[str, Check]) -> list[LabCheck]:
    """No telemetry: say where it stopped, skip what could not be judged."""
    msg, hint = o.error or o.status, o.hint or ""
    out: dict[str, LabCheck] = {}
    if o.failure is FailureClass.CONFIGURATION and "plan" in verdict:
        out[DEPLOYED] = LabCheck(DEPLOYED, "skipped", "nothing to deploy: no candidate fits")
        out[FITS] = LabCheck(FITS, "failed", f"no candidate fits: {verdict['plan'].observed}", hint)
    elif o.failure is FailureClass.RESULT:  # the runner was killed for memory
        out[DEPLOYED] = LabCheck(DEPLOYED, "passed", "deployed; the runner started")
        out[FITS] = LabCheck(FITS, "failed", msg, hint)
    else:
        out[DEPLOYED] = LabCheck(DEPLOYED, "error", msg, hint)
    return [out.get(n) or LabCheck(n, "skipped", f"not measured: {o.status}") for n in later]


def _from_verdict(verdict: dict[str, Check], key: str, name: str) -> LabCheck:
    c = verdict.get(key)
    if c is None:
        return LabCheck(name, "skipped", "not checked")
    text = f"observed {c.observed} vs limit {c.limit}"
    if not c.passed and c.severity == "warning":  # missed, but not failed (a busy board): shown as a miss
        return LabCheck(name, "warning", f"missed (not failed): {text}", c.detail)
    return LabCheck(name, "passed" if c.passed else "failed", text, c.detail)


def _prediction(verdict: dict[str, Check]) -> LabCheck:
    parts = [verdict[k] for k in ("prediction decode", "prediction memory") if k in verdict]
    if not parts:
        return LabCheck(PREDICTION, "skipped", "not checked")
    failed = [c for c in parts if not c.passed]
    text = "; ".join(c.detail for c in parts)
    if not failed:
        return LabCheck(PREDICTION, "passed", text)
    if any(c.severity == "error" for c in failed):
        return LabCheck(PREDICTION, "failed", text)
    # a miss is never drawn as a pass: without --strict-prediction it does not fail CI, but it shows
    return LabCheck(PREDICTION, "warning", f"prediction missed (not strict): {text}")


def _regression(o: BoardOutcome) -> LabCheck:
    r = o.regression
    if r is None:
        return LabCheck(REGRESSION, "passed", "no earlier passing run of this board, model and quant: nothing to compare")
    return LabCheck(REGRESSION, "failed" if r.regressed else "passed", r.describe())


def _detail(verdict: dict[str, Check], key: str) -> str:
    c = verdict.get(key)
    return f"{key}: {'ok' if c.passed else 'FAILED'} ({c.observed})" if c else ""
