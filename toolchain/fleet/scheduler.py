"""Run every selected board of a lab concurrently: connect, lock the board, deploy over that same
connection (probe, plan, package, transfer, run, validate), retry infrastructure failures with
backoff, enforce nested timeouts.

pipeline.deploy is the unit of work per board; a pool of worker threads runs them, so one board's
failure never stops another. Each board's progress goes to its own event sink (its pipeline.log,
and the stage hook below); no shared output is redirected. Python threads cannot be killed, so
timeouts are enforced twice: a watchdog in the calling thread gives up on an overrunning board at
once (its result is recorded as an infrastructure timeout and the rest of the lab goes on), and
the abandoned worker aborts at its next stage boundary, where the sink's stage hook raises. The
worker keeps its board lock (and heartbeat) until it really stops, so nobody else deploys over it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from toolchain.core.errors import EXIT_OK, EXIT_TARGET, EdgeDeployError, FailureClass, InternalError, TargetError
from toolchain.core.events import Events, LineEvents
from toolchain.core.identifiers import inside, slug
from toolchain.core.nouns import Check, TargetSpec, Verdict
from toolchain.core.serde import to_json_dict
from toolchain.deploy import pipeline
from toolchain.deploy.pipeline import DeployOptions, DeployRequest
from toolchain.fleet.classify import retryable, status_text
from toolchain.fleet.durations import fmt_duration
from toolchain.fleet.inventory import Lab, LabBoard
from toolchain.fleet.live import BoardLine, LiveView
from toolchain.fleet.locks import BoardLock, Holder, LockBusy, LockError
from toolchain.fleet.regression import RegressionCheck
from toolchain.models.catalog import load_catalog
from toolchain.models.sources import obtain
from toolchain.probe.reach import deploy_root, probe_target
from toolchain.transports.base import Transport
from toolchain.transports.factory import connect
from toolchain.verdict.report import Report, ShipFailed, new_run_dir, write_reports

WATCH_S = 0.2  # how often the watchdog and the live view look at the boards
LOCK_GRACE_S = 30.0  # the lock enforces its own wait; the watchdog only catches a hung link there

# pipeline.deploy's shape: (the connection the lab holds the lock on, the request, the board's
# event sink, the run directory) -> Report, raising ShipFailed. Tests pass a scripted board.
DeployFn = Callable[[Transport, DeployRequest, Events, Path], Report]


def _deploy(transport: Transport, request: DeployRequest, events: Events, run_dir: Path) -> Report:
    return pipeline.deploy(transport, request, events, run_dir=run_dir)


class StageTimeout(TargetError):
    """A stage, the board or the job ran past its timeout (raised in the abandoned worker)."""


@dataclass
class StageTime:
    name: str
    started_s: float  # since the board started
    duration_s: float | None = None


@dataclass
class BoardOutcome:
    name: str
    labels: tuple[str, ...]
    target: str
    started_at: datetime
    passed: bool = False
    failure: FailureClass | None = None
    exit_code: int = EXIT_TARGET
    error: str | None = None
    hint: str | None = None
    attempts: int = 0
    reached: bool = False  # a command ran on the board (connected) at least once
    report: Report | None = None  # the board's run report (report.json is its document)
    run_dir: str | None = None
    stages: list[StageTime] = field(default_factory=list)
    lock_waited_s: float = 0.0
    lock_waited_for: str | None = None
    lock_took_over: str | None = None
    regression: RegressionCheck | None = None
    timed_out: bool = False
    duration_s: float = 0.0

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def status(self) -> str:
        return status_text(self.failure, self.retries)


@dataclass
class _Job:
    board: LabBoard
    outcome: BoardOutcome
    state: str = "queued"  # queued | running | done
    stage: str = "queued"
    note: str = ""
    attempt: int = 0
    t0: float = 0.0
    stage_t0: float = 0.0
    run_dir: Path | None = None
    abandoned: str | None = None  # why the watchdog gave up on it
    wake: threading.Event = field(default_factory=threading.Event)
    # the board lock's token, the same for every attempt: a retry takes back the lock an attempt
    # cut off from the board could not release (locks.py), rather than wait lock.ttl behind itself
    lock_token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def line(self, now: float) -> BoardLine:
        o = self.outcome
        if self.state == "done":
            note = o.status if o.passed else f"{o.status}: {o.error or 'see the report'}"
            return BoardLine(o.name, "passed" if o.passed else "FAILED", o.duration_s, self.attempt,
                             "" if note == "passed" else note, done=True, passed=o.passed)
        return BoardLine(o.name, self.stage, now - self.t0 if self.t0 else 0.0, self.attempt, self.note)


class LabRunner:
    def __init__(self, lab: Lab, boards: tuple[LabBoard, ...], *, parallel: int, run_dir: Path, probe_only: bool = False,
                 view: LiveView | None = None, deploy_fn: DeployFn | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.lab = lab
        self.boards = boards
        self.parallel = max(1, min(parallel, len(boards)))
        self.run_dir = run_dir
        self.probe_only = probe_only
        self.view = view
        self.deploy_fn: DeployFn = deploy_fn or _deploy
        self.clock = clock
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []

    # --- the calling thread: start workers, watch, show ------------------------------------------

    def run(self) -> list[BoardOutcome]:
        now_utc = datetime.now(UTC)
        self._jobs = [_Job(b, BoardOutcome(b.name, b.labels, _target_text(b.spec), now_utc)) for b in self.boards]
        if not self.probe_only:
            self._prefetch_models()
        todo: queue.Queue[_Job] = queue.Queue()
        for job in self._jobs:
            todo.put(job)
        start = self.clock()
        job_deadline = start + self.lab.timeouts.job_s
        for i in range(self.parallel):
            threading.Thread(target=self._worker, args=(todo,), name=f"lab-worker-{i}", daemon=True).start()
        while True:
            with self._cond:
                if all(j.state == "done" for j in self._jobs):
                    break
                self._cond.wait(WATCH_S)
                self._watchdog(self.clock(), job_deadline)
            self._show()
        self._show()
        return [j.outcome for j in self._jobs]

    def _show(self) -> None:
        if self.view is not None:
            now = self.clock()
            with self._cond:
                lines = [j.line(now) for j in self._jobs]
            self.view.show(lines)

    def _watchdog(self, now: float, job_deadline: float) -> None:
        """Called with self._cond held: give up on boards past their stage, board or job timeout."""
        for job in self._jobs:
            if job.state == "done":
                continue
            t = job.board.timeouts
            if now > job_deadline:
                self._abandon(job, f"the lab job ran past its timeout ({fmt_duration(self.lab.timeouts.job_s)}, "
                              f"timeouts.job) {'before the board started' if job.state == 'queued' else f'in stage {job.stage}'}",
                              "raise timeouts.job in the lab file, or run fewer boards per job (--label) or more at once (--parallel)")
            elif job.state == "running" and now - job.t0 > t.board_s:
                self._abandon(job, f"board ran past its timeout ({fmt_duration(t.board_s)}) in stage {job.stage}",
                              "the board may be hung; or raise timeouts.board in the lab file")
            elif job.state == "running" and (job.stage in t.stages_s or job.stage == "lock"):
                limit = t.stage_s(job.stage) + (LOCK_GRACE_S if job.stage == "lock" else 0.0)
                if now - job.stage_t0 > limit:
                    self._abandon(job, f"stage {job.stage} ran past its timeout ({fmt_duration(t.stage_s(job.stage))})",
                                  f"the board may be hung or slow: if it is just slow, raise timeouts.stages.{job.stage} in the lab file")

    def _abandon(self, job: _Job, why: str, hint: str) -> None:
        job.abandoned = why
        job.wake.set()
        o = job.outcome
        o.failure, o.exit_code, o.timed_out = FailureClass.INFRASTRUCTURE, EXIT_TARGET, True
        o.error, o.hint = f"{o.name}: {why}", hint
        if job.run_dir is not None:
            o.run_dir = str(job.run_dir)
        self._done(job)

    def _done(self, job: _Job) -> None:
        o = job.outcome
        o.passed = o.exit_code == EXIT_OK and o.failure is None
        o.duration_s = (self.clock() - job.t0) if job.t0 else 0.0
        if o.stages and o.stages[-1].duration_s is None:
            o.stages[-1].duration_s = o.duration_s - o.stages[-1].started_s
        job.state = "done"
        self._cond.notify_all()

    def _prefetch_models(self) -> None:
        """Models the lab names exactly are fetched once, here: parallel boards must not download one file at once."""
        catalog = load_catalog()
        wanted = {(b.models[0], b.quants[0]) for b in self.boards if len(b.models) == 1 and len(b.quants) == 1 and b.plan_file is None}
        for model, quant in sorted(wanted):
            if model in catalog:
                try:
                    obtain(catalog[model], quant, offline=self.lab.offline)
                except EdgeDeployError:
                    pass  # the board's own run reports it, classified

    # --- worker threads ---------------------------------------------------------------------------

    def _worker(self, todo: queue.Queue[_Job]) -> None:
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            with self._cond:
                if job.state == "done":  # abandoned while queued (job timeout)
                    continue
                job.state, job.t0 = "running", self.clock()
                job.stage_t0 = job.t0
            log = inside(self.run_dir / "boards", slug(job.board.name)) / "pipeline.log"  # names are slugs (inventory.py): unchanged
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as out:  # one file across retries
                try:
                    self._run_board(job, out)
                except StageTimeout:
                    pass  # abandoned between attempts: the watchdog recorded it
                except Exception as exc:  # a bug: never let one board take a worker (and the boards queued behind it) down
                    traceback.print_exc(file=out)
                    bug = InternalError.wrap(exc)
                    with self._cond:
                        if job.state != "done":
                            o = job.outcome
                            o.failure, o.exit_code = bug.failure_class, bug.exit_code
                            o.error, o.hint = f"{o.name}: {bug.message}", "see the board's pipeline.log; " + bug.hint
                            self._done(job)

    def _run_board(self, job: _Job, log: IO[str]) -> None:
        board, policy = job.board, self.lab.retry
        result = _Attempt(EXIT_TARGET, FailureClass.INFRASTRUCTURE)
        for attempt in range(1, policy.attempts + 1):
            with self._cond:
                if job.abandoned:
                    return
                job.attempt = attempt
                job.outcome.attempts = attempt
                job.run_dir = None
            result = self._attempt(job, log)
            if result.failure is not None:  # the lab report keeps only the last attempt: the log keeps each one's why
                log.write(f"attempt {attempt} failed ({result.failure.value}): {result.error}\n")
                log.flush()
            if not (retryable(result.failure) and not result.no_retry and attempt < policy.attempts):
                break
            delay = policy.delay_s(attempt)
            if self.clock() - job.t0 + delay >= board.timeouts.board_s:
                break  # no time left in the board's timeout for another try
            log.write(f"retrying in {delay:g} s\n")
            self._set_stage(job, "retry", f"{result.error}; next try in {delay:g} s")
            if job.wake.wait(delay):
                return  # abandoned while backing off
        with self._cond:
            if job.abandoned:
                return  # the watchdog already recorded this board
            o = job.outcome
            o.exit_code, o.failure, o.error, o.hint = result.exit_code, result.failure, result.error, result.hint
            o.report = result.report
            o.run_dir = str(job.run_dir) if job.run_dir else None
            self._done(job)

    def _attempt(self, job: _Job, log: IO[str]) -> _Attempt:
        """One try: connect, take the board lock over that connection, deploy over it too (a
        serial console can be opened only once)."""
        board = job.board
        spec = board.spec
        events = LineEvents(log, on_stage=lambda name: self._set_stage(job, name))
        try:
            self._set_stage(job, "connect")
            with connect(spec, accept_new_host_key=spec.host_key == "accept-new") as transport:
                # An absolute deploy dir needs no round trip for $HOME (it adds up over a fleet).
                root = spec.deploy_dir if spec.deploy_dir and spec.deploy_dir.startswith("/") else deploy_root(spec, transport)
                self._set_stage(job, "lock")
                lock = BoardLock(transport, root, lab=self.lab.name, ttl_s=self.lab.lock_ttl_s, token=job.lock_token)

                def waiting(holder: Holder) -> None:
                    job.outcome.reached = True
                    self._set_stage(job, "lock", f"waiting for {holder.describe()}")

                t_lock = self.clock()
                with lock.held(board.timeouts.lock_wait_s, on_wait=waiting):
                    job.outcome.reached = True  # the lock is a command that ran on the board
                    job.outcome.lock_waited_s += self.clock() - t_lock
                    job.outcome.lock_waited_for = lock.waited_for.describe() if lock.waited_for else None
                    job.outcome.lock_took_over = lock.took_over.describe() if lock.took_over else None
                    if lock.reclaimed:
                        events.log("took back the board lock the last attempt left (it lost the board before releasing it)")
                    run_dir = new_run_dir(board.name)
                    job.run_dir = run_dir
                    if self.probe_only:
                        report = self._probe(job, transport, root, events, run_dir)
                    else:
                        request = DeployRequest(target=spec, plan=board.request, deploy_dir=root, quick_probe=board.quick_probe,
                                                strict_prediction=board.strict_prediction,
                                                options=DeployOptions(offline_wheels=self.lab.offline))
                        if board.workers:  # a group: the split across the head and its workers (deploy/group.py)
                            from toolchain.deploy.group import ship_group

                            report = ship_group([spec, *board.workers], request, events, run_dir=run_dir)
                        else:
                            report = self.deploy_fn(transport, request, events, run_dir)
                if lock.lost:  # the run itself finished: keep its report beside the infrastructure failure
                    lost = TargetError(f"{board.name}: lost the board lock while working (it expired and another job took it over)",
                                       "the link to the board stalled longer than lock.ttl; raise lock.ttl in the lab file")
                    return _Attempt.of(lost, report)
            return _Attempt(EXIT_OK, None, report=report)
        except LockError as exc:  # the board answered; its lock is the problem
            job.outcome.reached = True
            return _Attempt.of(exc, None, no_retry=isinstance(exc, LockBusy))  # busy: waited the full lock_wait already
        except ShipFailed as exc:
            return _Attempt.of(exc.cause, exc.report, no_retry=isinstance(exc.cause, StageTimeout))
        except EdgeDeployError as exc:
            return _Attempt.of(exc, self._saved_report(job), no_retry=isinstance(exc, StageTimeout))
        except Exception as exc:  # a bug or an unforeseen library error: recorded, never fatal to the lab, never retried
            traceback.print_exc(file=log)
            bug = InternalError.wrap(exc)
            return _Attempt(bug.exit_code, bug.failure_class, f"{board.name}: {bug.message}", "see the board's pipeline.log; " + bug.hint,
                            self._saved_report(job), no_retry=True)

    def _probe(self, job: _Job, transport: Transport, root: str, events: Events, run_dir: Path) -> Report:
        """--probe-only: reachability and facts, no deployment (a fleet health check)."""
        self._set_stage(job, "probe")
        spec = job.board.spec
        facts = probe_target(spec, transport, root, events, quick=job.board.quick_probe)
        (run_dir / "facts.json").write_text(json.dumps(to_json_dict(facts), indent=2) + "\n")
        verdict = Verdict(True, [Check("reachable", True, f"probed in {facts.probe_s:.1f} s", "answers over its transport")])
        report = Report(target=spec.name, run_dir=str(run_dir), verdict=verdict)
        write_reports(report)
        return report

    def _set_stage(self, job: _Job, stage: str, note: str = "") -> None:
        """Record a stage change; in an abandoned worker, stop here (the cooperative half of timeouts)."""
        with self._cond:
            if job.abandoned:
                raise StageTimeout(f"{job.board.name}: {job.abandoned}", "see the lab report")
            now = self.clock()
            if stage != job.stage or not job.outcome.stages:
                if job.outcome.stages and job.outcome.stages[-1].duration_s is None:
                    job.outcome.stages[-1].duration_s = now - job.t0 - job.outcome.stages[-1].started_s
                job.outcome.stages.append(StageTime(stage, now - job.t0))
                job.stage, job.stage_t0 = stage, now
            job.note = note
            self._cond.notify_all()

    @staticmethod
    def _saved_report(job: _Job) -> Report | None:
        """What an attempt that failed outside the pipeline left: only the run directory is known."""
        if job.run_dir is None or not (job.run_dir / "report.json").exists():
            return None
        return Report(target=job.board.spec.name, run_dir=str(job.run_dir), verdict=Verdict(False, []))


@dataclass(frozen=True)
class _Attempt:
    exit_code: int
    failure: FailureClass | None
    error: str | None = None
    hint: str | None = None
    report: Report | None = None
    no_retry: bool = False  # retrying cannot help (waited out the lock already, timed out, a bug)

    @classmethod
    def of(cls, exc: EdgeDeployError, report: Report | None, *, no_retry: bool = False) -> _Attempt:
        return cls(exc.exit_code, exc.failure_class, exc.message, exc.hint, report, no_retry or exc.failure_class is FailureClass.INTERNAL)


def _target_text(spec: TargetSpec) -> str:
    if spec.kind == "ssh":
        return f"{spec.user + '@' if spec.user else ''}{spec.host}{':' + str(spec.port) if spec.port else ''}"
    if spec.kind == "adb":
        return f"adb:{spec.adb_serial}" if spec.adb_serial else "adb"
    if spec.kind == "serial":
        return f"serial:{spec.device}"
    return spec.kind

