"""One error hierarchy: each class carries its exit code and its failure class.

Every error carries a one-line message (what happened, with the evidence) and a hint (the next
thing to try). The CLI (cli/app.py) and the lab (fleet/scheduler.py) map errors in one place each,
by class: nothing else in the package decides exit codes or whether a failure is retried.

Failure classes are the way lab engineers triage (after LAVA's lava_common/exceptions.py):
infrastructure (the board or the link failed: retried), configuration (the request or the lab file
is wrong: retrying cannot help), result (the board ran and missed: what CI exists to catch), and
internal (a bug in edgedeploy itself: never retried, never blamed on a board).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class FailureClass(StrEnum):
    INFRASTRUCTURE = "infrastructure"
    CONFIGURATION = "configuration"
    RESULT = "result"
    INTERNAL = "internal"


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_TARGET = 3
EXIT_NOTHING_FITS = 4
EXIT_VALIDATION = 5
# Stopped by a signal: 128 + its number, as a shell reports a process the signal killed (CI
# systems and `timeout` read it that way), though edgedeploy exits by itself after its clean-up.
EXIT_SIGHUP = 129
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class EdgeDeployError(Exception):
    """Root error: a message for the user, a hint, and the exit code it maps to."""

    exit_code = EXIT_BAD_INPUT
    failure_class = FailureClass.CONFIGURATION

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def document(self) -> Mapping[str, object] | None:
        """What `--json` prints for this error, when it has more to say than message and hint (a
        failed ship: its report); None: the CLI's error document."""
        return None


class BadInputError(EdgeDeployError):
    """Usage, configuration or model-file problems (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class TargetError(EdgeDeployError):
    """Target unreachable, or a command on it failed (exit 3)."""

    exit_code = EXIT_TARGET
    failure_class = FailureClass.INFRASTRUCTURE


class CommandFailed(TargetError):
    """A command on the target exited non-zero; keeps the tail of its output."""

    def __init__(self, message: str, hint: str = "", *, exit_status: int = -1, output_tail: str = "") -> None:
        super().__init__(message, hint)
        self.exit_status = exit_status
        self.output_tail = output_tail


class CommandTimeout(TargetError):
    """A command on the target did not finish within its timeout."""


class ServiceUnreachable(EdgeDeployError):
    """A service the host fetches from (the model hub, the package index) did not answer (exit 3):
    the network, not the request, so a lab retries it like a board that did not answer."""

    exit_code = EXIT_TARGET
    failure_class = FailureClass.INFRASTRUCTURE


# What pip and huggingface_hub print when the connection, not the request, failed.
_NETWORK_MARKERS = ("ConnectError", "ConnectionError", "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                    "Name or service not known", "Network is unreachable", "Connection refused", "Connection reset",
                    "timed out", "Timeout", "ProxyError", "SSLError", "RemoteDisconnected", "503", "502", "504", "429")


def fetch_error(message: str, hint: str, output: str) -> EdgeDeployError:
    """A failed download: ServiceUnreachable when its output shows the network failing (pip reports
    an unreachable index as 'No matching distribution' after its connection retries), else bad input."""
    if any(m in output for m in _NETWORK_MARKERS):
        return ServiceUnreachable(message, hint + " (the service did not answer: this machine's network or proxy)")
    return BadInputError(message, hint)


class NothingFitsError(EdgeDeployError):
    """No candidate fits memory and the latency budget (exit 4)."""

    exit_code = EXIT_NOTHING_FITS
    failure_class = FailureClass.CONFIGURATION


class ValidationFailed(EdgeDeployError):
    """The measured result misses the budget or the plan's limits (exit 5)."""

    exit_code = EXIT_VALIDATION
    failure_class = FailureClass.RESULT


class InternalError(EdgeDeployError):
    """A bug in edgedeploy (an exception no stage expected), wrapped so it is reported, not retried (exit 1)."""

    exit_code = EXIT_INTERNAL
    failure_class = FailureClass.INTERNAL

    @classmethod
    def wrap(cls, exc: BaseException) -> InternalError:
        return cls(f"internal error: {type(exc).__name__}: {exc}", "this is a bug in edgedeploy: re-run with --debug and report the traceback")


class Interrupted(KeyboardInterrupt):
    """A signal asked edgedeploy to stop (SIGINT: Ctrl-C; SIGTERM: a CI job cancelled; SIGHUP: the
    terminal went away). A BaseException like KeyboardInterrupt, which it subclasses, so that no
    `except Exception` / `except EdgeDeployError` on the way up swallows it (a calibration that
    "fails" into class defaults, a best-effort restart): only the pipeline's clean-up and the CLI
    catch it. Exits 128 + the signal's number.

    Not retried in a lab: infrastructure, since the job was stopped from outside, not by the board's
    result nor by a bug."""

    failure_class = FailureClass.INFRASTRUCTURE

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        try:
            self.signal_name = signal.Signals(signum).name
        except ValueError:
            self.signal_name = f"signal {signum}"
        self.exit_code = 128 + signum
        self.stage = ""
        self.message = f"interrupted by {self.signal_name}"
        self.hint = "nothing half-shipped was activated: the previous release stays current; ship again to resume the upload"
        self.report_document: Mapping[str, object] | None = None  # the run's report, once written
        super().__init__(self.message)

    def at(self, stage: str) -> Interrupted:
        """Name the stage it stopped (once: the innermost stage is the news)."""
        if not self.stage:
            self.stage = stage
            self.message = f"interrupted by {self.signal_name} during the {stage} stage"
            self.args = (self.message,)
        return self

    def document(self) -> Mapping[str, object] | None:
        return self.report_document


def failure_class_of(exit_code: int) -> FailureClass | None:
    """The failure class an exit code stands for (for results recorded only as a code)."""
    return {EXIT_OK: None, EXIT_BAD_INPUT: FailureClass.CONFIGURATION, EXIT_NOTHING_FITS: FailureClass.CONFIGURATION,
            EXIT_TARGET: FailureClass.INFRASTRUCTURE, EXIT_VALIDATION: FailureClass.RESULT,
            EXIT_SIGHUP: FailureClass.INFRASTRUCTURE, EXIT_SIGINT: FailureClass.INFRASTRUCTURE,
            EXIT_SIGTERM: FailureClass.INFRASTRUCTURE}.get(exit_code, FailureClass.INTERNAL)
