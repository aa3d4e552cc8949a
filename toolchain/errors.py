"""One error hierarchy; the CLI maps each class to a documented exit code.

Every error carries a one-line message (what happened, with the evidence) and a hint
(the next thing to try). Nothing else in the package decides exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_TARGET = 3
EXIT_NOTHING_FITS = 4
EXIT_VALIDATION = 5


class EdgeDeployError(Exception):
    """Root error: a message for the user, a hint, and the exit code it maps to."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInputError(EdgeDeployError):
    """Usage, configuration or model-file problems (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class TargetError(EdgeDeployError):
    """Target unreachable, or a command on it failed (exit 3)."""

    exit_code = EXIT_TARGET


class CommandFailed(TargetError):
    """A command on the target exited non-zero; keeps the tail of its output."""

    def __init__(self, message: str, hint: str = "", *, exit_status: int = -1, output_tail: str = "") -> None:
        super().__init__(message, hint)
        self.exit_status = exit_status
        self.output_tail = output_tail


class CommandTimeout(TargetError):
    """A command on the target did not finish within its timeout."""


class NothingFitsError(EdgeDeployError):
    """No candidate fits memory and the latency budget (exit 4)."""

    exit_code = EXIT_NOTHING_FITS


class ValidationFailed(EdgeDeployError):
    """The measured result misses the budget or the plan's limits (exit 5)."""

    exit_code = EXIT_VALIDATION
