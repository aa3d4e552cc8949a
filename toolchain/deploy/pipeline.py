"""One deployment over a connection the caller holds:
probe -> provision -> plan -> dry load -> package -> transfer -> run -> validate -> (serve) -> report.

`deploy(transport, request, events) -> Report` is the whole flow; the CLI's `ship` and the lab
both call it (the lab with the transport it holds the board lock on). Progress goes to the event
sink passed in. Success returns the Report; anything else raises ShipFailed, which carries its
cause's exit code and failure class and the Report. Either way the run directory holds
report.json, report.md and junit.xml (a failed run still writes its report).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolchain.core import settings
from toolchain.core.errors import BadInputError, EdgeDeployError, InternalError, NothingFitsError
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

    def report(self, failure: Failure | None = None) -> Report:
        verdict = self.verdict or (failed_run_verdict(failure.message) if failure else Verdict(True, []))
        return Report(target=self.target, run_dir=str(self.run_dir), verdict=verdict, plan=self.plan, dry_load=self.dry_load,
                      release=self.release, telemetry=self.telemetry, serve=self.serve, failure=failure)


def ship(request: DeployRequest, events: Events, *, accept_new_host_key: bool = False) -> Report:
    """`edgedeploy ship`: open the connection, deploy over it, close it. A target that cannot be
    reached still gets a run directory with its report."""
    from toolchain.transports.factory import connect

    run_dir = new_run_dir(request.target.name)
    events.stage("connect")
    events.step(f"connecting to {request.target.name}")
    with ExitStack() as stack:
        try:
            transport = stack.enter_context(connect(request.target, accept_new_host_key=accept_new_host_key))
        except EdgeDeployError as exc:
            report = _Run(request.target.name, run_dir).report(Failure.of(exc, "connect"))
            write_reports(report)
            events.log(f"report: {run_dir / 'report.md'}")
            raise ShipFailed(exc, report) from exc
        return deploy(transport, request, events, run_dir=run_dir)


def deploy(transport: Transport, request: DeployRequest, events: Events, *, run_dir: Path | None = None) -> Report:
    """Deploy over `transport` (held by the caller). Returns the Report of a passing run (or a
    --force'd one); raises ShipFailed otherwise. The report is written in both cases."""
    run = _Run(request.target.name, run_dir or new_run_dir(request.target.name))
    try:
        _deploy(transport, request, events, run)
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
    except BaseException:  # interrupted (Ctrl-C): the run directory still says where it stopped
        interrupted = EdgeDeployError("interrupted", "nothing half-shipped was activated; ship again to resume the upload")
        write_reports(run.report(Failure.of(interrupted, run.stage)))
        raise
    report = run.report()
    write_reports(report)
    events.log(f"report: {run.run_dir / 'report.md'}")
    return report


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
    shipper = Shipper(transport, root, python=python, log=events.log)
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
        shipper.activate(release.id)
        shipper.prune()
        release = run.release = replace(release, activated=True)
        if opts.mode == "serve":
            stage("serve")
            _serve_release(server, shipper, opts.serve, release, events, run)
    else:
        _serve_previous(server, serving_before, shipper.current(), events)
    if not verdict.passed:
        failed = ", ".join(c.name for c in verdict.checks if not c.passed and c.severity == "error")
        raise VerdictFailed(f"validation failed: {failed}", f"see {run.run_dir / 'report.md'}")


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
