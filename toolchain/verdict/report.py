"""The end of the flow: Report (everything one deployment produced, frozen) and the run directory
it is written to: report.json (its serialisation), report.md (jinja2), junit.xml.

A failed deployment writes its report too: the pipeline raises ShipFailed, which carries the
cause (its exit code and failure class) and the Report with the failure in it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain import __version__
from toolchain.core.errors import EdgeDeployError, FailureClass, Interrupted, TargetError, ValidationFailed
from toolchain.core.nouns import NodeTelemetry, Plan, Release, Telemetry, Verdict
from toolchain.core.paths import runs_dir
from toolchain.core.serde import to_json_dict
from toolchain.deploy.dry_load import DryLoadReport
from toolchain.deploy.serve import ServeResult
from toolchain.verdict.junit import Case, Suite, write_junit

REPORT_FILES = ("report.json", "report.md", "junit.xml")


@dataclass(frozen=True)
class Failure:
    """Why a deployment did not succeed, and where."""

    message: str
    hint: str = ""
    failure_class: FailureClass = FailureClass.INTERNAL
    exit_code: int = 1
    stage: str = ""
    kind: str | None = None  # the runner's failure: oom | crash | timeout | reboot | unreachable
    log_tail: str = ""
    in_verdict: bool = False  # the run finished and its verdict failed (the checks say why)

    @classmethod
    def of(cls, exc: EdgeDeployError | Interrupted, stage: str) -> Failure:
        return cls(exc.message, exc.hint, exc.failure_class, exc.exit_code, stage, getattr(exc, "kind", None),
                   getattr(exc, "log_tail", ""), isinstance(exc, VerdictFailed))


@dataclass(frozen=True)
class Report:
    target: str
    run_dir: str
    verdict: Verdict
    plan: Plan | None = None
    dry_load: DryLoadReport | None = None
    release: Release | None = None
    telemetry: Telemetry | None = None
    serve: ServeResult | None = None
    failure: Failure | None = None
    # What this run found on the target and did about it besides deploying: a runner a killed ship
    # left behind, a lock taken over from a dead holder, the clean-up after an interrupt.
    notes: tuple[str, ...] = ()
    nodes: list[NodeTelemetry] = field(default_factory=list)  # a split across boards: each board measured

    @property
    def passed(self) -> bool:
        return self.failure is None and self.verdict.passed

    def document(self) -> dict[str, Any]:  # free-form JSON: the public report.json contract
        """report.json: the fields, with the failure flattened into the keys the contract has
        always had (error, hint, log_tail, failure_kind), plus its class and stage."""
        doc: dict[str, Any] = {"target": self.target, "plan": to_json_dict(self.plan), "release": to_json_dict(self.release),
                               "telemetry": to_json_dict(self.telemetry), "verdict": to_json_dict(self.verdict), "run_dir": self.run_dir}
        if self.dry_load is not None:
            doc["dry_load"] = to_json_dict(self.dry_load)
        if self.serve is not None:
            doc["serve"] = to_json_dict(self.serve)
        if self.nodes:
            doc["nodes"] = [to_json_dict(n) for n in self.nodes]
        f = self.failure
        if f is not None:
            if not f.in_verdict:  # a missed check speaks through the verdict's checks
                doc.update(error=f.message, hint=f.hint)
            if f.kind:
                doc["failure_kind"] = f.kind
            if f.log_tail:
                doc["log_tail"] = f.log_tail
            doc.update(failure_class=f.failure_class.value, failed_stage=f.stage, exit_code=f.exit_code)
        if self.notes:
            doc["notes"] = list(self.notes)
        doc["edgedeploy"] = __version__
        return doc


class VerdictFailed(ValidationFailed):
    """The release ran and its verdict failed (a budget or limit missed): exit 5, a result failure."""


class RunnerFailed(TargetError):
    """The runner ended without a result (crash, timeout, reboot, lost board): infrastructure."""

    def __init__(self, message: str, hint: str = "", *, kind: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint)
        self.kind = kind
        self.log_tail = log_tail


class RunnerOutOfMemory(ValidationFailed):
    """The runner was killed for memory: the plan did not fit what the board really had (exit 5)."""

    def __init__(self, message: str, hint: str = "", *, kind: str | None = "oom", log_tail: str = "") -> None:
        super().__init__(message, hint)
        self.kind = kind
        self.log_tail = log_tail


class ServeFailed(ValidationFailed):
    """The new release did not answer as a server; the previous one was put back (exit 5)."""

    def __init__(self, message: str, hint: str = "", *, log_tail: str = "") -> None:
        super().__init__(message, hint)
        self.kind: str | None = None
        self.log_tail = log_tail


class ShipFailed(EdgeDeployError):
    """A deployment that did not succeed. Takes its cause's exit code and failure class; carries
    the Report (already written to its run directory)."""

    def __init__(self, cause: EdgeDeployError, report: Report) -> None:
        super().__init__(cause.message, cause.hint)
        self.cause = cause
        self.report = report
        self.exit_code = cause.exit_code
        self.failure_class = cause.failure_class

    def document(self) -> dict[str, Any]:
        return self.report.document()


def new_run_dir(target: str, base: Path | None = None) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in target)[:40]
    first = (base or runs_dir()) / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    first.parent.mkdir(parents=True, exist_ok=True)
    # mkdir is the claim: two runs (threads of a lab, or two CI jobs) naming the same second both
    # get a directory of their own instead of one failing.
    for n in range(1, 1000):
        path = first if n == 1 else first.with_name(f"{first.name}~{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{first}: 999 runs in one second")


def write_reports(report: Report) -> dict[str, Any]:
    """Write report.json, report.md and junit.xml into the report's run directory; returns the JSON document."""
    from toolchain.deploy.package import environment

    run_dir = Path(report.run_dir)
    doc = report.document()
    (run_dir / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    env = environment(strict=False)
    (run_dir / "report.md").write_text(env.get_template("report.md.j2").render(r=doc))
    write_junit(run_dir / "junit.xml", [run_suite(report)])
    return doc


def run_suite(report: Report) -> Suite:
    """One run's checks as a JUnit suite: an error-severity check that failed is a <failure>."""
    cases = []
    for c in report.verdict.checks:
        msg = f"observed {c.observed} vs limit {c.limit}" + (f": {c.detail}" if c.detail else "")
        outcome = "failed" if not c.passed and c.severity == "error" else ("warning" if not c.passed else "passed")
        cases.append(Case(c.name, outcome, msg))
    f = report.failure
    return Suite(report.target, f"edgedeploy.{report.target}", cases,
                 failure_type=f.failure_class.value if f else "result", system_out=f"{f.message}" if f else "")
