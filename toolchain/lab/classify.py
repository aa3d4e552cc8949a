"""Failure classes the way lab engineers triage them (after LAVA), from exit codes (pure).

infrastructure: the board or the link failed (unreachable, transfer broke, runner crashed, busy,
timed out) - retried with backoff. configuration: the lab file or the request is wrong (bad input,
nothing fits) - retrying cannot help. result: the board ran and missed (budget, prediction,
regression) - the thing CI exists to catch.
"""

from __future__ import annotations

from enum import StrEnum

from toolchain.errors import EXIT_BAD_INPUT, EXIT_NOTHING_FITS, EXIT_OK, EXIT_TARGET, EXIT_VALIDATION


class FailureClass(StrEnum):
    INFRASTRUCTURE = "infrastructure"
    CONFIGURATION = "configuration"
    RESULT = "result"


def classify_exit(code: int) -> FailureClass | None:
    if code == EXIT_OK:
        return None
    if code == EXIT_TARGET:
        return FailureClass.INFRASTRUCTURE
    if code in (EXIT_BAD_INPUT, EXIT_NOTHING_FITS):
        return FailureClass.CONFIGURATION
    if code == EXIT_VALIDATION:
        return FailureClass.RESULT
    return FailureClass.INFRASTRUCTURE  # anything unforeseen: the harness, not the board's result


def retryable(failure: FailureClass | None) -> bool:
    return failure is FailureClass.INFRASTRUCTURE


def lab_exit_code(codes: list[int]) -> int:
    """One exit code for a lab run: the most actionable failure first (fix the lab file before
    chasing the boards, fix the boards before reading results)."""
    for wanted in (EXIT_BAD_INPUT, EXIT_NOTHING_FITS, EXIT_TARGET, EXIT_VALIDATION):
        if wanted in codes:
            return wanted
    return next((c for c in codes if c != EXIT_OK), EXIT_OK)


def status_text(failure: FailureClass | None, retries: int) -> str:
    """'passed', 'passed after 2 retries', 'infrastructure failure (after 2 retries)'."""
    after = f"after {retries} {'retry' if retries == 1 else 'retries'}"
    if failure is None:
        return f"passed {after}" if retries else "passed"
    return f"{failure.value} failure" + (f" ({after})" if retries else "")
