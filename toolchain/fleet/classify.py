"""How the lab triages a board's outcome (pure): failure classes come from the error hierarchy
(core/errors.py); this module decides what is retried and the lab's one exit code."""

from __future__ import annotations

from toolchain.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NOTHING_FITS, EXIT_OK, EXIT_TARGET, EXIT_VALIDATION, FailureClass, failure_class_of

__all__ = ["FailureClass", "classify_exit", "lab_exit_code", "retryable", "status_text"]


def classify_exit(code: int) -> FailureClass | None:
    return failure_class_of(code)


def retryable(failure: FailureClass | None) -> bool:
    """Only the board or the link failing is worth another try; a bug in edgedeploy is not."""
    return failure is FailureClass.INFRASTRUCTURE


def lab_exit_code(codes: list[int]) -> int:
    """One exit code for a lab run: the most actionable failure first (a bug in edgedeploy, then
    the lab file, then the boards, then the results)."""
    for wanted in (EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NOTHING_FITS, EXIT_TARGET, EXIT_VALIDATION):
        if wanted in codes:
            return wanted
    return next((c for c in codes if c != EXIT_OK), EXIT_OK)


def status_text(failure: FailureClass | None, retries: int) -> str:
    """'passed', 'passed after 2 retries', 'infrastructure failure (after 2 retries)'."""
    after = f"after {retries} {'retry' if retries == 1 else 'retries'}"
    if failure is None:
        return f"passed {after}" if retries else "passed"
    return f"{failure.value} failure" + (f" ({after})" if retries else "")
