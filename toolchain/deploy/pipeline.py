"""One deployment over a connection the caller holds:
probe -> provision -> plan -> dry load -> package -> transfer -> run -> validate -> (serve) -> report.

`deploy(transport, request, events) -> Report` is the whole flow; the CLI's `ship` and the lab
both call it (the lab with the transport it holds the board lock on). Progress goes to the event
sink passed in. Success returns the Report; anything else raises ShipFailed, which carries its
cause's exit code and failure class and the Report. Either way the run directory holds
report.json, report.md and junit.xml (a failed run still writes its report).

A signal (errors.Interrupted, raised by the CLI's handlers) is not a failure of the board: the
command it interrupted was killed on the target by the transport, deploy() stops any runner left
under the deploy root, puts the previous release back if this run had switched, writes the report
(stage and signal) and re-raises. `ship` holds the board's lock (fleet/locks.py) for the whole
deployment, as the lab does; the lab calls deploy() under the lock it took.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolchain.core import settings
from toolchain.core.errors import BadInputError, EdgeDeployError, InternalError, Interrupted, NothingFitsError
from toolchain.core.events import Events
from toolchain.core.nouns import Check, HostFacts, Plan, Release, Selected, TargetSpec, Telemetry, Verdict
from toolchain.core.serde import to_json_dict
from toolchain.deploy.dry_load import DryLoadReport
from toolchain.deploy.releases import Shipper
from toolchain.deploy.serve import ServeOptions, Server, ServeResult, ServeState
from toolchain.models.gguf_reader import sha256_file
from toolchain.plan import calibration
from toolchain.plan.request import PlanRequest
from toolchain.transports.base import Transport
from toolchain.verdict.report import (
    Failure,
    Report,
    RunnerFailed,
    RunnerOutOfMemory,
    ServeFailed,
    ShipFailed,
    VerdictFailed,
    new_run_dir,
    write_reports,
)
from toolchain.verdict.validate import failed_run_verdict, missed_on_noise


@dataclass(frozen=True)
class DeployOptions:
    """How the release runs once shipped (ship --mode, --sustained, --serve-*)."""

    mode: str = "bench"  # bench | serve (bench first, then leave it serving)
    sustained_s: float = 0.0  # bench this long, to report the speed after the board has heated
    serve: ServeOptions = field(default_factory=ServeOptions)
    offline_wheels: bool = False  # provisioning uses only the wheelhouse
    # first contact: benchmark llama.cpp on a device with no stored measurements before planning
    calibrate: bool = field(default_factory=settings.calibrate)


@dataclass(frozen=True)
class DeployRequest:
    """Everything one deployment needs besides the connection: built by the CLI or the lab."""

    target: TargetSpec
    plan: PlanRequest
    deploy_dir: str | None = None  # None: the target's own (TargetSpec.deploy_dir, else the kind's default)
    force: bool = False  # activate even when validation fails
    quick_probe: bool = False
    strict_prediction: bool = False
    options: DeployOptions = field(default_factory=DeployOptions)


class _Run:
    """What one deployment has produced so far; frozen into a Report when it ends."""

    def __init__(self, target: str, run_dir: Path) -> None:
        self.target = target
        self.run_dir = run_dir
        self.stage = "connect"
        self.plan: Plan | None = None
        self.dry_load: DryLoadReport | None = None
        self.release: Release | None = None
        self.telemetry: Telemetry | None = None
        self.verdict: Verdict | None = None
        self.serve: ServeResult | None = None
        self.notes: list[str] = []
        # For the clean-up after an interrupt: where releases live, and the switch this run made.
        self.root: str | None = None
        self.shipper: Shipper | None = None
        self.server: Server | None = None  # set once this run starts the new release's server
        self.stopped_server = False  # the serving release's server was stopped for the bench
        self.switched_from: str | None = None  # this run made its release current; this was current before

    def report(self, failure: Failure | None = None) -> Report:
        verdict = self.verdict or (failed_run_verdict(failure.message) if failure else Verdict(True, []))
        return Report(target=self.target, run_dir=str(self.run_dir), verdict=verdict, plan=self.plan, dry_load=self.dry_load,
                      release=self.release, telemetry=self.telemetry, serve=self.serve, failure=failure, notes=tuple(self.notes))


LOCK_TTL_S = 120.0  # a ship killed on another host holds the board this long at most (renewed while it works)


def ship(request: DeployRequest, events: Events, *, accept_new_host_key: bool = False, lock_wait_s: float = 0.0,
         what: str = "ship") -> Report:
    """`edgedeploy ship`: open the connection, take the board's lock (waiting up to lock_wait_s for
    its holder; 0: fail at once, naming it), deploy over it, release, close. A target that cannot be
    reached, or is locked, still gets a run directory with its report."""
    run = _Run(request.target.name, new_run_dir(request.target.name))
    run.stage = "connect"
    with ExitStack() as stack:
        try:
            events.stage("connect")
            events.step(f"connecting to {request.target.name}")
            transport = stack.enter_context(connect_and_lock(request.target, request.deploy_dir, events, run.notes, what=what,
                                                             lock_wait_s=lock_wait_s, accept_new_host_key=accept_new_host_key,
                                                             on_stage=lambda name: setattr(run, "stage", name)))
        except EdgeDeployError as exc:
            report = run.report(Failure.of(exc, run.stage))
            write_reports(report)
            events.log(f"report: {run.run_dir / 'report.md'}")
            raise ShipFailed(exc, report) from exc
        except KeyboardInterrupt as exc:
            stopped = _interrupted(exc, run.stage)
            _write_interrupted(run, stopped, events)
            raise stopped from None
        return deploy(transport, request, events, run_dir=run.run_dir, notes=run.notes)


@contextmanager
def connect_and_lock(target: TargetSpec, deploy_dir: str | None, events: Events, notes: list[str], *, what: str,
                     lock_wait_s: float, accept_new_host_key: bool = False,
                     on_stage: Callable[[str], None] | None = None) -> Iterator[Transport]:
    """A connection to target holding its board lock (the lab's: fleet/locks.py) while in use:
    `ship` and `rollback`. A lock taken over from a dead holder is said in notes."""
    from toolchain.fleet.locks import BoardLock, Holder
    from toolchain.probe.reach import deploy_root
    from toolchain.transports.factory import connect

    with connect(target, accept_new_host_key=accept_new_host_key) as transport:
        if on_stage is not None:
            on_stage("lock")
        events.stage("lock")
        root = deploy_root(target, transport, deploy_dir)
        Shipper(transport, root).prepare()  # the lock lives in the deploy root: an unwritable one is bad input (exit 2), said here
        lock = BoardLock(transport, root, lab=None, ttl_s=LOCK_TTL_S, what=what,
                         busy_hint="wait for it to finish, or give --wait (e.g. --wait 10m) to queue behind it")
        said: list[Holder] = []

        def waiting(holder: Holder) -> None:
            if not said:
                said.append(holder)
                events.log(f"  {target.name} is locked by {holder.describe()}: waiting up to {lock_wait_s:g} s")

        with lock.held(lock_wait_s, on_wait=waiting):
            if lock.took_over is not None:
                notes.append(f"took over the board lock from {lock.took_over.describe()}, which had died")
            yield transport


def _interrupted(exc: KeyboardInterrupt, stage: str) -> Interrupted:
    """The signal as an Interrupted naming the stage (a bare KeyboardInterrupt: SIGINT)."""
    import signal

    return (exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)).at(stage)


def _write_interrupted(run: _Run, stopped: Interrupted, events: Events) -> None:
    report = run.report(Failure.of(stopped, stopped.stage))
    stopped.report_document = write_reports(report)
    events.log(f"report: {run.run_dir / 'report.md'}")


def deploy(transport: Transport, request: DeployRequest, events: Events, *, run_dir: Path | None = None,
           notes: list[str] | None = None) -> Report:
    """Deploy over `transport` (held by the caller). Returns the Report of a passing run (or a
    --force'd one); raises ShipFailed otherwise, Interrupted on a signal. The report is written in
    every case."""
    run = _Run(request.target.name, run_dir or new_run_dir(request.target.name))
    run.notes.extend(notes or [])
    try:
        _deploy(transport, request, events, run)
    except KeyboardInterrupt as exc:  # a signal (errors.Interrupted; Ctrl-C without the CLI's handler)
        stopped = _interrupted(exc, run.stage)
        _clean_up_interrupted(transport, run, request, events)
        _write_interrupted(run, stopped, events)
        raise stopped from None
    except EdgeDeployError as exc:
        report = run.report(Failure.of(exc, run.stage))
        write_reports(report)
        events.log(f"report: {run.run_dir / 'report.md'}")
        raise ShipFailed(exc, report) from exc
    except Exception as exc:  # a bug: reported as one, never as the board's fault
        internal = InternalError.wrap(exc)
        report = run.report(Failure.of(internal, run.stage))
        write_reports(report)
        raise ShipFailed(internal, report) from exc
    report = run.report()
    write_reports(report)
    events.log(f"report: {run.run_dir / 'report.md'}")
    return report


def _clean_up_interrupted(transport: Transport, run: _Run, req: DeployRequest, events: Events) -> None:
    """After a signal: no runner left on the target, and the release that was current before stays
    current. Best effort (the board may be what went away); what was done goes into the notes."""
    from toolchain.deploy.run import stop_runners

    events.log(f"  interrupted during {run.stage}: cleaning up on {req.target.name}")
    try:
        if run.root is not None:  # the transport killed the command it was running; this catches the rest
            run.notes.extend(x.describe() for x in stop_runners(transport, run.root))
        if run.switched_from is not None and run.shipper is not None and run.release is not None:
            if run.server is not None:
                run.server.stop()  # the new release's server, started by this run
                run.notes.append(f"stopped the server of release {run.release.id}, started by this run")
            run.shipper.activate(run.switched_from)
            run.release = replace(run.release, activated=False)
            run.notes.append(f"switched back to release {run.switched_from}: this run had made {run.release.id} current")
        if run.stopped_server:
            run.notes.append("the previous release's server was stopped for the bench and is not running: "
                             "ship again with --mode serve to start it")
    except EdgeDeployError as exc:
        run.notes.append(f"clean-up after the interrupt failed: {exc.message}")


def _calibrate_if_new(transport: Transport, req: DeployRequest, root: str, python: str, facts: HostFacts, events: Events,
                      run: _Run, stage: Callable[[str], None]) -> None:
    """A device never measured is benchmarked first (probe/calibrate.py), so that its first plan
    rests on what llama.cpp does there. A calibration that fails costs the plan its basis, not the
    deployment: it is planned on class defaults, and says so."""
    from toolchain.probe.calibrate import calibrate, needs_calibration

    if not needs_calibration(facts):
        return
    stage("calibrate")
    try:
        calibrate(transport, root, python, facts, events, local_dir=run.run_dir, board_id=req.plan.board or req.target.board,
                  overrides=req.plan.overrides)
    except EdgeDeployError as exc:
        events.log(f"  {exc.message}; planning on class defaults")


def _deploy(transport: Transport, req: DeployRequest, events: Events, run: _Run) -> None:
    from toolchain.deploy.package import package
    from toolchain.deploy.provision import Provisioner
    from toolchain.deploy.run import run_bench
    from toolchain.models.catalog import load_catalog
    from toolchain.models.gguf_reader import read_gguf
    from toolchain.models.sources import obtain
    from toolchain.plan.request import load_plan, plan_for
    from toolchain.probe.reach import deploy_root, probe_target, runtime_facts, target_python
    from toolchain.verdict.validate import validate

    spec, opts = req.target, req.options

    def stage(name: str) -> None:
        run.stage = name
        events.stage(name)

    planned = None
    if req.plan.plan_file:  # checked before the board is touched: a damaged plan must not cost a probe and a build
        stage("plan")
        planned = load_plan(req.plan)
    root = deploy_root(spec, transport, req.deploy_dir)
    run.root = root
    _stop_leftovers(transport, root, events, run)
    stage("probe")
    facts = probe_target(spec, transport, root, events, quick=req.quick_probe)
    (run.run_dir / "facts.json").write_text(json.dumps(to_json_dict(facts), indent=2) + "\n")

    stage("provision")
    backend = planned.selected.placement.backend if planned is not None and planned.selected else req.plan.overrides.backend
    prov = Provisioner(transport, root, log=events.log, offline=opts.offline_wheels or req.plan.offline is True,
                       backend=backend if backend != "auto" else "cpu")
    probed_python = target_python(spec, facts)
    python = prov.ensure(probed_python, server=opts.mode == "serve").python
    if python != probed_python:  # the plan's backend is checked against the runtime that will run it
        facts = runtime_facts(transport, python, facts)
        (run.run_dir / "facts.json").write_text(json.dumps(to_json_dict(facts), indent=2) + "\n")

    if planned is None and opts.calibrate:
        _calibrate_if_new(transport, req, root, python, facts, events, run, stage)

    stage("plan")
    events.step("planning")
    plan = planned if planned is not None else plan_for(facts, req.plan, target_kind=spec.kind, target_board=spec.board)
    run.plan = plan
    (run.run_dir / "plan.json").write_text(json.dumps(to_json_dict(plan), indent=2) + "\n")
    sel = plan.selected
    if sel is None:
        run.verdict = Verdict(passed=False, checks=[Check("plan", False, plan.nearest_miss, "a fitting candidate")])
        raise NothingFitsError(f"nothing fits the budgets on {spec.name}; nearest: {plan.nearest_miss}",
                               "raise --budget, lower --ctx, or allow --allow-low-bit")
    events.log(f"  selected {sel.model} {sel.quant}: predicted {sel.predicted.decode_tokens_per_s:.1f} tok/s, "
               f"{sel.predicted.peak_memory_bytes / 2**20:.0f} MiB")
    gguf = Path(sel.gguf_path) if sel.gguf_path else obtain(load_catalog()[sel.model], sel.quant, log=events.log)
    if not gguf.is_file():  # a plan may name a FIFO or a device: never read one
        raise BadInputError(f"the plan's model file {gguf} is not a regular file", "plan again, or give --model FILE")
    read_gguf(gguf)  # rejects truncated/corrupt files (and anything that is not a GGUF) before anything is shipped
    sha = cached_sha256(gguf)

    stage("dry_load")
    _dry_load(transport, python, gguf, sel, root, facts, events, run)

    stage("package")
    events.step("packaging")
    bundle = package(plan, gguf, run.run_dir / "bundle", python=python, model_sha256=sha)

    stage("transfer")
    events.step(f"shipping to {root}")
    shipper = run.shipper = Shipper(transport, root, python=python, log=events.log)
    shipper.prepare()
    with events.transfer("model", gguf.stat().st_size) as bar:
        _, sent, present = shipper.upload_model(gguf, sha, progress=bar)
    release = replace(shipper.install_release(bundle), model_bytes_sent=sent, model_already_present=present)
    run.release = release

    stage("run")
    server = Server(transport, root, python)
    serving_before = server.state() if opts.mode == "serve" else {}
    if serving_before:  # the old server would compete with the bench for memory and cores
        server.stop()
        run.stopped_server = True
    events.step(f"running release {release.id} on {spec.name}")
    sustained = ["--sustained-s", f"{opts.sustained_s:g}"] if opts.sustained_s else []
    outcome = run_bench(transport, release, python=python, run_dir=run.run_dir, extra_args=sustained)
    if outcome.telemetry is None:
        events.log(f"  {outcome.error}; previous release stays current")
        _serve_previous(server, serving_before, shipper.current(), events)
        run.verdict = failed_run_verdict(outcome.error or "runner failed")
        error_cls = RunnerOutOfMemory if outcome.failure_kind == "oom" else RunnerFailed
        raise error_cls(outcome.error or "runner failed", "see the run's report.md and runner.log.tail",
                        kind=outcome.failure_kind, log_tail=outcome.log_tail)
    tel = outcome.telemetry
    run.telemetry = tel

    stage("validate")

    def judge(t: Telemetry) -> Verdict:
        return validate(t, sel, plan.budget, usable_memory_bytes=facts.memory.usable_bytes, shipped_sha256=sha,
                        strict_prediction=req.strict_prediction)

    verdict = judge(tel)
    if missed_on_noise(verdict, tel):
        events.log(f"  the board was busy during the measurement ({tel.busy()}): measuring once more")
        again = run_bench(transport, release, python=python, run_dir=run.run_dir, extra_args=sustained).telemetry
        if again is not None and (again.busy() is None or again.median_decode_tokens_per_s > tel.median_decode_tokens_per_s):
            tel = run.telemetry = again
            verdict = judge(tel)
    run.verdict = verdict
    calibration.record_run(facts, plan, tel)  # every shipped run is a measurement of the device
    if verdict.passed or req.force:
        # An interrupt from here on switches back (until _deploy returns). A first release has
        # nothing to switch back to: it stays current, as it passed.
        run.switched_from = shipper.current()
        shipper.activate(release.id)
        shipper.prune()
        release = run.release = replace(release, activated=True)
        if opts.mode == "serve":
            stage("serve")
            run.server = server
            _serve_release(server, shipper, opts.serve, release, events, run)
    else:
        _serve_previous(server, serving_before, shipper.current(), events)
    run.stopped_server = False
    run.switched_from = run.server = None  # done: nothing to undo any more
    if not verdict.passed:
        failed = ", ".join(c.name for c in verdict.checks if not c.passed and c.severity == "error")
        raise VerdictFailed(f"validation failed: {failed}", f"see {run.run_dir / 'report.md'}")


def _stop_leftovers(transport: Transport, root: str, events: Events, run: _Run) -> None:
    """A ship killed mid-run (SIGKILL, a lost host) may have left its runner running, where the
    runner cannot tell (a serial console), or its pid file: stop and clear them before this run
    measures anything, and say so in the report."""
    from toolchain.deploy.run import stop_runners

    for found in stop_runners(transport, root):
        events.log(f"  {found.describe()}")
        run.notes.append(found.describe())


def _serve_release(server: Server, shipper: Shipper, opts: ServeOptions, release: Release, events: Events, run: _Run) -> None:
    """Leave the new current release serving; if it does not answer a completion, roll back."""
    events.step(f"starting the server on {opts.host}:{opts.port}")
    res = server.start(opts, release.id)
    run.serve = res
    if res.ok:
        events.log(f"  serving {release.id} ({res.manager}, pid {res.pid}): answered {res.answer!r} after {res.seconds:.1f} s")
        return
    error = f"the server did not answer a completion on {opts.host}:{opts.port}: {res.error}"
    run.verdict = failed_run_verdict(error)
    if release.previous:
        shipper.activate(release.previous)
        run.release = replace(release, activated=False)
        _serve_previous(server, {"host": opts.host, "port": opts.port}, release.previous, events)
        events.log(f"  {error}; rolled back to {release.previous}")
    raise ServeFailed(error, "see the server log in the run's report.md", log_tail=res.log_tail)


def _serve_previous(server: Server, serving_before: ServeState, current: str | None, events: Events) -> None:
    """Put back the server a failed ship stopped (best effort: the ship's own error is the news)."""
    if not serving_before or not current:
        return
    try:
        port = serving_before.get("port", 8080)
        server.start(ServeOptions(host=str(serving_before.get("host", "127.0.0.1")), port=port if isinstance(port, int) else 8080), current)
    except EdgeDeployError as exc:
        events.log(f"  could not restart the previous server: {exc.message}")


def _dry_load(transport: Transport, python: str, gguf: Path, sel: Selected, root: str, facts: HostFacts, events: Events, run: _Run) -> None:
    """llama.cpp's allocator sizes the plan on the device before the model is shipped (dry_load.py).
    Raises NothingFitsError when its sizes do not fit; a dry load that cannot run is reported, not fatal."""
    from toolchain.deploy import dry_load

    usable = facts.memory.usable_bytes
    events.step("dry load on the target (allocator sizes, no weights)")
    doc = dry_load.check(transport, python, gguf, sel, root, usable)
    run.dry_load = doc
    if doc.fits is None:
        events.log(f"  dry load skipped: {doc.result.error}")
        return
    for row in doc.comparison:
        events.log(f"  {row.component:<16} predicted {row.predicted_bytes / 2**20:8.1f} MiB, allocator {row.allocator_bytes / 2**20:8.1f} MiB")
    if sel.placement.offloaded:
        events.log(f"  on {sel.placement.device or sel.placement.backend:<13} predicted {sel.predicted.device_memory_bytes / 2**20:8.1f} MiB, "
                   f"allocator {doc.device_bytes / 2**20:8.1f} MiB")
    if doc.fits is False and doc.device_budget_bytes is not None and doc.device_bytes > doc.device_budget_bytes:
        run.verdict = Verdict(passed=False, checks=[Check("dry load fits device memory", False, doc.device_bytes, doc.device_budget_bytes)])
        raise NothingFitsError(f"dry load: llama.cpp's allocator puts {doc.device_bytes / 2**20:.0f} MiB on {sel.placement.device}, "
                               f"which has {doc.device_budget_bytes / 2**20:.0f} MiB free",
                               "plan again with --gpu-layers lower, or a smaller model (--model/--quant)")
    if doc.fits is False:
        need = doc.allocator_peak_bytes or 0
        run.verdict = Verdict(passed=False, checks=[Check("dry load fits", False, need, usable)])
        raise NothingFitsError(f"dry load: llama.cpp's allocator needs {need / 2**30:.2f} GiB, {usable / 2**30:.2f} GiB usable",
                               "lower --ctx, or plan again with a smaller model (--model/--quant)")


def cached_sha256(path: Path) -> str:
    """sha256 with a sidecar cache keyed by size and mtime: multi-GB files are hashed once."""
    st = path.stat()
    side = path.with_name(path.name + ".sha256")
    key = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        stored_key, digest = side.read_text().split()
        if stored_key == key:
            return digest
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    try:
        side.write_text(f"{key} {digest}\n")
    except OSError:
        pass  # read-only location: hash again next time
    return digest


__all__ = ["DeployOptions", "DeployRequest", "Report", "ShipFailed", "cached_sha256", "deploy", "ship"]
