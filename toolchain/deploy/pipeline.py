"""The stages chained: probe -> plan -> package -> ship -> run -> collect -> validate -> report.

Each stage function takes the output of the one before; `ship` chains them all and always
writes its run directory (a failed run still writes its report).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.cli import console as ui
from toolchain.core.errors import EXIT_NOTHING_FITS, EXIT_OK, EXIT_TARGET, EXIT_VALIDATION, BadInputError, EdgeDeployError
from toolchain.core.nouns import Budget, Check, HostFacts, Plan, Release, TargetSpec, Verdict
from toolchain.core.serde import from_dict, to_json_dict
from toolchain.deploy.package import package
from toolchain.deploy.provision import Provisioner
from toolchain.deploy.releases import Shipper
from toolchain.deploy.run import run_bench
from toolchain.deploy.serve import ServeOptions, Server
from toolchain.models.catalog import load_catalog
from toolchain.models.gguf_reader import read_gguf, sha256_file
from toolchain.models.sources import obtain, offline_sources
from toolchain.plan import calibration
from toolchain.plan.basis import Overrides, build_basis, build_options
from toolchain.plan.boards import BoardSpec, load_boards, lookup_board
from toolchain.plan.select import PlanOptions, make_plan
from toolchain.probe.reach import deploy_root, probe_target, target_python
from toolchain.transports.base import Transport
from toolchain.transports.factory import connect
from toolchain.verdict.report import new_run_dir, write_reports
from toolchain.verdict.validate import failed_run_verdict, validate


@dataclass(frozen=True)
class PlanRequest:
    budget: Budget
    budget_given: bool = True
    plan_file: Path | None = None  # ship a saved plan instead of planning
    ctx: int | None = None
    models: tuple[str, ...] = ()
    quants: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()
    allow_low_bit: bool = False
    offline: bool | None = None  # None: the target's default (local plans with what is here)
    overrides: Overrides = field(default_factory=Overrides)
    board: str | None = None


def plan_for(facts: HostFacts | None, req: PlanRequest, *, target_kind: str = "local", target_board: str | None = None) -> Plan:
    boards = load_boards()
    board_id = req.board or target_board
    board: BoardSpec | None = lookup_board(boards, board_id) if board_id else None
    corr = calibration.correction(calibration.load(calibration.fingerprint(facts))) if facts else calibration.Correction(1.0, 0, "")
    basis, speed, threads = build_basis(facts, board, req.overrides, corr)
    offline = req.offline if req.offline is not None else target_kind == "local"
    options = build_options(load_catalog(), offline_sources(), models=req.models, quants=req.quants, paths=req.paths)
    opts = PlanOptions(ctx=req.ctx, threads=threads, allow_low_bit=req.allow_low_bit, require_available=offline)
    return make_plan(options, basis, speed, req.budget, opts, target=facts.target if facts else (board.id if board else "what-if"))


# (stage, run dir): fired as each stage starts; the lab's live view and stage timeouts hook in here.
StageFn = Callable[[str, Path], None]


@dataclass(frozen=True)
class DeployOptions:
    """How the release runs once shipped (ship --mode, --sustained, --serve-*)."""

    mode: str = "bench"  # bench | serve (bench first, then leave it serving)
    sustained_s: float = 0.0  # bench this long, to report the speed after the board has heated
    serve: ServeOptions = field(default_factory=ServeOptions)
    offline_wheels: bool = False  # provisioning uses only the wheelhouse


@dataclass
class ShipResult:
    report: dict[str, Any]
    exit_code: int
    run_dir: Path


def ship(spec: TargetSpec, req: PlanRequest, *, deploy_dir: str | None = None, force: bool = False,
         accept_new_host_key: bool = False, quick_probe: bool = False, strict_prediction: bool = False,
         on_stage: StageFn | None = None, deploy: DeployOptions | None = None) -> ShipResult:
    run_dir = new_run_dir(spec.name)
    stage: Callable[[str], None] = (lambda name: on_stage(name, run_dir)) if on_stage else (lambda name: None)
    report: dict[str, Any] = {"target": spec.name, "plan": None, "release": None, "telemetry": None,
                              "verdict": {"passed": False, "checks": []}, "run_dir": str(run_dir)}
    code = EXIT_TARGET
    try:
        code = _ship(spec, req, run_dir, report, deploy_dir, force, accept_new_host_key, quick_probe, strict_prediction, stage,
                     deploy or DeployOptions())
    except EdgeDeployError as exc:
        report["error"] = exc.message
        report["hint"] = exc.hint
        if not report["verdict"]["checks"]:
            report["verdict"] = to_json_dict(failed_run_verdict(exc.message))
        code = exc.exit_code
        raise
    finally:
        write_reports(run_dir, report)
        ui.log(f"report: {run_dir / 'report.md'}")
    return ShipResult(report, code, run_dir)


def _ship(spec: TargetSpec, req: PlanRequest, run_dir: Path, report: dict[str, Any], deploy_dir: str | None,
          force: bool, accept_new: bool, quick_probe: bool, strict_prediction: bool, stage: Callable[[str], None],
          deploy: DeployOptions) -> int:
    stage("connect")
    ui.step(f"connecting to {spec.name}")
    with connect(spec, accept_new_host_key=accept_new) as transport:
        root = deploy_root(spec, transport, deploy_dir)
        stage("probe")
        facts = probe_target(spec, transport, root, quick=quick_probe)
        (run_dir / "facts.json").write_text(json.dumps(to_json_dict(facts), indent=2) + "\n")
        stage("provision")
        prov = Provisioner(transport, root, log=ui.log, offline=deploy.offline_wheels or req.offline is True)
        python = prov.ensure(target_python(spec, facts), server=deploy.mode == "serve").python
        stage("plan")
        ui.step("planning")
        plan = load_plan(req) if req.plan_file else plan_for(facts, req, target_kind=spec.kind, target_board=spec.board)
        report["plan"] = to_json_dict(plan)
        (run_dir / "plan.json").write_text(json.dumps(report["plan"], indent=2) + "\n")
        sel = plan.selected
        if sel is None:
            report["error"] = f"nothing fits the budgets on {spec.name}; nearest: {plan.nearest_miss}"
            report["hint"] = "raise --budget, lower --ctx, or allow --allow-low-bit"
            miss = Check("plan", False, plan.nearest_miss, "a fitting candidate")
            report["verdict"] = to_json_dict(Verdict(passed=False, checks=[miss]))
            return EXIT_NOTHING_FITS
        ui.log(f"  selected {sel.model} {sel.quant}: predicted {sel.predicted.decode_tokens_per_s:.1f} tok/s, "
               f"{sel.predicted.peak_memory_bytes / 2**20:.0f} MiB")
        entry_paths = {Path(sel.gguf_path)} if sel.gguf_path else set()
        gguf = next(iter(entry_paths)) if entry_paths else obtain(load_catalog()[sel.model], sel.quant, log=ui.log)
        read_gguf(gguf)  # rejects truncated/corrupt files before anything is shipped
        sha = cached_sha256(gguf)
        stage("dry_load")
        if _dry_load(transport, python, gguf, plan, root, facts.memory.usable_bytes, report) is False:
            return EXIT_NOTHING_FITS
        stage("package")
        ui.step("packaging")
        bundle = package(plan, gguf, run_dir / "bundle", python=python, model_sha256=sha)
        stage("transfer")
        ui.step(f"shipping to {root}")
        shipper = Shipper(transport, root, python=python, log=ui.log)
        shipper.prepare()
        with ui.transfer_bar("model", gguf.stat().st_size) as bar:
            _, sent, present = shipper.upload_model(gguf, sha, progress=bar)
        release = replace(shipper.install_release(bundle), model_bytes_sent=sent, model_already_present=present)
        report["release"] = to_json_dict(release)
        stage("run")
        server = Server(transport, root, python)
        serving_before = server.state() if deploy.mode == "serve" else {}
        if serving_before:  # the old server would compete with the bench for memory and cores
            server.stop()
        ui.step(f"running release {release.id} on {spec.name}")
        sustained = ["--sustained-s", f"{deploy.sustained_s:g}"] if deploy.sustained_s else []
        outcome = run_bench(transport, release, python=python, run_dir=run_dir, extra_args=sustained)
        if outcome.telemetry is None:
            report["error"] = outcome.error
            report["log_tail"] = outcome.log_tail
            report["failure_kind"] = outcome.failure_kind
            report["verdict"] = to_json_dict(failed_run_verdict(outcome.error or "runner failed"))
            ui.log(f"  {outcome.error}; previous release stays current")
            _serve_previous(server, serving_before, shipper.current())
            return EXIT_VALIDATION if outcome.failure_kind == "oom" else EXIT_TARGET
        tel = outcome.telemetry
        stage("validate")
        report["telemetry"] = to_json_dict(tel)
        verdict = validate(tel, sel, plan.budget, usable_memory_bytes=facts.memory.usable_bytes,
                           shipped_sha256=sha, strict_prediction=strict_prediction)
        report["verdict"] = to_json_dict(verdict)
        _record_calibration(facts, plan, tel.decode_tokens_per_s, tel.peak_rss_bytes)
        if verdict.passed or force:
            shipper.activate(release.id)
            shipper.prune()
            release = replace(release, activated=True)
            report["release"] = to_json_dict(release)
            if deploy.mode == "serve":
                stage("serve")
                return _serve_release(server, shipper, deploy.serve, release, report, EXIT_OK if verdict.passed else EXIT_VALIDATION)
        _serve_previous(server, serving_before, shipper.current())
        return EXIT_OK if verdict.passed else EXIT_VALIDATION


def _serve_release(server: Server, shipper: Shipper, opts: ServeOptions, release: Release, report: dict[str, Any], code: int) -> int:
    """Leave the new current release serving; if it does not answer a completion, roll back."""
    ui.step(f"starting the server on {opts.host}:{opts.port}")
    res = server.start(opts, release.id)
    report["serve"] = to_json_dict(res)
    if res.ok:
        ui.log(f"  serving {release.id} ({res.manager}, pid {res.pid}): answered {res.answer!r} after {res.seconds:.1f} s")
        return code
    report["error"] = f"the server did not answer a completion on {opts.host}:{opts.port}: {res.error}"
    report["log_tail"] = res.log_tail
    report["verdict"] = to_json_dict(failed_run_verdict(report["error"]))
    if release.previous:
        shipper.activate(release.previous)
        report["release"] = to_json_dict(replace(release, activated=False))
        _serve_previous(server, {"host": opts.host, "port": opts.port}, release.previous)
        ui.log(f"  {report['error']}; rolled back to {release.previous}")
    return EXIT_VALIDATION


def _serve_previous(server: Server, serving_before: dict[str, Any], current: str | None) -> None:
    """Put back the server a failed ship stopped (best effort: the ship's own error is the news)."""
    if not serving_before or not current:
        return
    try:
        server.start(ServeOptions(host=str(serving_before.get("host", "127.0.0.1")), port=int(serving_before.get("port", 8080))), current)
    except EdgeDeployError as exc:
        ui.log(f"  could not restart the previous server: {exc.message}")


def load_plan(req: PlanRequest) -> Plan:
    """A saved `plan --json` document; --budget, when given, replaces the plan's budget."""
    assert req.plan_file is not None
    try:
        plan = from_dict(Plan, json.loads(req.plan_file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BadInputError(f"{req.plan_file}: not a plan JSON document ({exc})", "write one with: edgedeploy plan ... --json > plan.json") from exc
    return replace(plan, budget=req.budget) if req.budget_given else plan


def _dry_load(transport: Transport, python: str, gguf: Path, plan: Plan, root: str, usable: int, report: dict[str, Any]) -> bool | None:
    """llama.cpp's allocator sizes the plan on the device before the model is shipped (dryload.py).
    Returns False when its sizes do not fit; a dry load that cannot run is reported, not fatal."""
    from toolchain.deploy import dry_load as dryload

    assert plan.selected is not None
    ui.step("dry load on the target (allocator sizes, no weights)")
    doc = dryload.check(transport, python, gguf, plan.selected, root, usable)
    report["dry_load"] = doc
    if doc["fits"] is None:
        ui.log(f"  dry load skipped: {doc['result'].get('error')}")
    else:
        for row in doc["comparison"]:
            ui.log(f"  {row['component']:<16} predicted {row['predicted_bytes'] / 2**20:8.1f} MiB, allocator "
                   f"{row['allocator_bytes'] / 2**20:8.1f} MiB")
    if doc["fits"] is False:
        report["error"] = (f"dry load: llama.cpp's allocator needs {doc['allocator_peak_bytes'] / 2**30:.2f} GiB, "
                           f"{usable / 2**30:.2f} GiB usable")
        report["hint"] = "lower --ctx, or plan again with a smaller model (--model/--quant)"
        report["verdict"] = to_json_dict(Verdict(passed=False, checks=[Check("dry load fits", False, doc["allocator_peak_bytes"], usable)]))
    return doc["fits"]  # type: ignore[no-any-return]


def _record_calibration(facts: HostFacts, plan: Plan, decode_tps: float, peak_rss: int) -> None:
    sel = plan.selected
    assert sel is not None
    factor = calibration.correction(calibration.load(calibration.fingerprint(facts))).factor
    calibration.record(calibration.fingerprint(facts), {
        "model": sel.model, "quant": sel.quant, "threads": sel.threads, "ctx": sel.ctx,
        "predicted_decode_s": sel.predicted.decode_ms_per_token / 1000.0 / factor,  # uncorrected basis
        "measured_decode_s": 1.0 / decode_tps, "bytes_per_token": sel.predicted.bytes_per_token,
        "predicted_peak_bytes": sel.predicted.bench_rss_bytes or sel.predicted.peak_memory_bytes, "measured_peak_bytes": peak_rss,
        "family": sel.predicted.kernel_family, "bytes_by_type": sel.predicted.bytes_by_type,
        "bandwidth_bytes_per_s": plan.basis.bandwidth_bytes_per_s,
    })


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


def release_summary(release: Release) -> str:
    return f"{release.id} ({'activated' if release.activated else 'not activated'})"
