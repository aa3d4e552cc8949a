"""Load a lab file: boards by name, their transport, labels, per-label/per-board settings, timeouts.

Settings apply in layers: `defaults`, then each of the board's labels in the order it lists them,
then the board itself. Every error names the file and the key (a typo in a lab file must not
silently become a default). See targets/lab.example.yaml and docs/lab.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolchain.core.config import field, load_yaml
from toolchain.core.errors import BadInputError
from toolchain.core.identifiers import check_slug
from toolchain.core.nouns import Budget, TargetSpec
from toolchain.core.units import parse_duration_ms
from toolchain.fleet.durations import fmt_duration, parse_duration_s
from toolchain.plan.request import PlanRequest, build_plan_request, resolve_budget
from toolchain.transports.targets import KINDS, resolve_target

# Stages a board goes through, in order; "lock" is the wait for the board lock.
STAGES = ("lock", "connect", "probe", "provision", "calibrate", "plan", "package", "transfer", "run", "validate")
DEFAULT_STAGE_S = {"connect": 60.0, "probe": 300.0, "provision": 900.0, "calibrate": 900.0, "plan": 120.0, "package": 300.0, "transfer": 1800.0,
                   "run": 1800.0, "validate": 60.0}
DEFAULT_JOB_S, DEFAULT_BOARD_S, DEFAULT_LOCK_WAIT_S = 7200.0, 3600.0, 600.0

TOP_KEYS = {"name", "defaults", "labels", "boards", "timeouts", "retries", "lock", "history", "offline"}
SETTING_KEYS = {"model", "quant", "budget", "ttft", "ctx", "threads", "plan", "probe", "strict_prediction", "timeouts", "backend",
                "gpu_layers"}
TARGET_KEYS = {"target", "transport", "host", "user", "port", "serial", "device", "baud", "deploy_dir", "python", "board",
               "host_key", "login_user", "login_password_env"}
# With `target:` only these may refine what the target string resolved to.
TARGET_REFINEMENTS = {"deploy_dir", "python", "board", "host_key", "login_user", "login_password_env"}
TIMEOUT_KEYS = {"job", "board", "lock_wait", "stages"}


@dataclass(frozen=True)
class Timeouts:
    job_s: float
    board_s: float
    lock_wait_s: float
    stages_s: dict[str, float]

    def stage_s(self, stage: str) -> float:
        return self.lock_wait_s if stage == "lock" else self.stages_s.get(stage, self.board_s)


@dataclass(frozen=True)
class RetryPolicy:
    """Infrastructure failures only; the delay doubles each retry, up to max_backoff_s."""

    attempts: int = 3
    backoff_s: float = 5.0
    max_backoff_s: float = 60.0

    def delay_s(self, retry: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, retry - 1)))


@dataclass(frozen=True)
class LabBoard:
    name: str
    spec: TargetSpec
    labels: tuple[str, ...]
    request: PlanRequest  # built by the same function as the CLI's options (plan/request.py)
    quick_probe: bool
    strict_prediction: bool
    timeouts: Timeouts
    # a group: this board is the head, these the workers of a model split across them (llama.cpp RPC)
    workers: tuple[TargetSpec, ...] = ()

    @property
    def budget(self) -> Budget:
        return self.request.budget

    @property
    def models(self) -> tuple[str, ...]:
        return self.request.models + tuple(str(p) for p in self.request.paths)

    @property
    def quants(self) -> tuple[str, ...]:
        return self.request.quants

    @property
    def ctx(self) -> int | None:
        return self.request.ctx

    @property
    def threads(self) -> int | None:
        return self.request.overrides.threads

    @property
    def plan_file(self) -> Path | None:
        return self.request.plan_file


@dataclass(frozen=True)
class Lab:
    name: str
    source: Path
    boards: tuple[LabBoard, ...]
    timeouts: Timeouts
    retry: RetryPolicy
    lock_ttl_s: float
    history: str | None
    # The host has no model hub or package index (lab-wide: the host, not a board, downloads): plans
    # choose only models obtainable here, provisioning installs only from the wheelhouse.
    offline: bool = False

    def quick_probe(self) -> Lab:
        """Every board probed without measurements (--quick)."""
        return replace(self, boards=tuple(replace(b, quick_probe=True) for b in self.boards))

    def offline_only(self) -> Lab:
        """Every board planned from what is obtainable without a hub (offline: true, --offline)."""
        return replace(self, offline=True, boards=tuple(replace(b, request=replace(b.request, offline=True)) for b in self.boards))

    def select(self, labels: list[str] | None) -> tuple[LabBoard, ...]:
        """Boards carrying every one of labels (all boards when none given)."""
        if not labels:
            return self.boards
        chosen = tuple(b for b in self.boards if set(labels) <= set(b.labels))
        if not chosen:
            known = sorted({lab for b in self.boards for lab in b.labels})
            raise BadInputError(f"{self.source}: no board has label(s) {', '.join(labels)}",
                                f"labels in this lab: {', '.join(known) or '(none)'}")
        return chosen


def load_lab(path: Path) -> Lab:
    data = load_yaml(path)
    where = str(path)
    _no_unknown(data, TOP_KEYS, where, "")
    base_dir = path.resolve().parent
    job = _timeouts(data.get("timeouts") or {}, f"{where}: timeouts", None)
    defaults = _mapping(data, "defaults", where)
    _no_unknown(defaults, SETTING_KEYS, where, "defaults.")
    labels: dict[str, Mapping[str, object]] = {}
    for label, settings in _mapping(data, "labels", where).items():
        if not isinstance(settings, dict):
            raise BadInputError(f"{where}: labels.{label} should be a mapping of settings", f"use keys: {', '.join(sorted(SETTING_KEYS))}")
        _no_unknown(settings, SETTING_KEYS, where, f"labels.{label}.")
        labels[label] = settings
    boards_raw = _mapping(data, "boards", where)
    if not boards_raw:
        raise BadInputError(f"{where}: no boards", "add a 'boards:' mapping of board name -> target")
    for name in boards_raw:  # a board's name becomes a folder of the run directory (boards/<name>/pipeline.log)
        check_slug(str(name), f"{where}: boards key", "name boards with letters, digits, '.', '_', '+' and '-', e.g. pi5-a")
    boards = _groups(tuple(_board(str(name), entry, where, base_dir, defaults, labels, job) for name, entry in boards_raw.items()),
                     boards_raw, where)
    retries = _mapping(data, "retries", where)
    _no_unknown(retries, {"attempts", "backoff", "max_backoff"}, where, "retries.")
    attempts = field(retries, "attempts", int, f"{where}: retries", optional=True, default=3)
    if attempts < 1:
        raise BadInputError(f"{where}: retries.attempts is {attempts}", "use 1 (no retry) or more")
    retry = RetryPolicy(
        attempts=attempts,
        backoff_s=parse_duration_s(retries.get("backoff", 5), f"{where}: retries.backoff"),
        max_backoff_s=parse_duration_s(retries.get("max_backoff", 60), f"{where}: retries.max_backoff"),
    )
    lock = _mapping(data, "lock", where)
    _no_unknown(lock, {"ttl"}, where, "lock.")
    lab = Lab(
        name=field(data, "name", str, where, optional=True, default=path.stem),
        source=path, boards=boards, timeouts=job.timeouts, retry=retry,
        lock_ttl_s=parse_duration_s(lock.get("ttl", 120), f"{where}: lock.ttl"),
        history=field(data, "history", str, where, optional=True),
    )
    return lab.offline_only() if field(data, "offline", bool, where, optional=True, default=False) else lab


# --- boards ---------------------------------------------------------------------------------


def _groups(boards: tuple[LabBoard, ...], raw: Mapping[str, object], where: str) -> tuple[LabBoard, ...]:
    """`workers: [...]` on a board makes it the head of a group (ship --target head --target w ...):
    each worker is a board of this lab (then it runs only as part of the group) or a target string."""
    by_name = {b.name: b for b in boards}
    heads = {str(name) for name, e in raw.items() if isinstance(e, dict) and "workers" in e}
    used: dict[str, str] = {}
    out = []
    for b in boards:
        entry = raw.get(b.name)
        names = entry.get("workers") if isinstance(entry, dict) else None
        if names is None:
            out.append(b)
            continue
        at = f"{where}: boards.{b.name}.workers"
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise BadInputError(f"{at} should be a list of board names or targets", "e.g. workers: [pi5-b, pi5-c]")
        specs = []
        for n in names:
            if n == b.name or n in used or n in heads:
                raise BadInputError(f"{at}: {n} cannot be a worker here", "a board is the head of one group or a worker of one, once")
            used[n] = b.name
            specs.append(by_name[n].spec if n in by_name else _parse(lambda n=n: resolve_target(n), f"{at}: {n}"))
        out.append(replace(b, workers=tuple(specs)))
    return tuple(b for b in out if b.name not in used)



def _board(name: str, entry: object, where: str, base_dir: Path, defaults: Mapping[str, object], labels: Mapping[str, Mapping[str, object]],
           job: _TimeoutLayers) -> LabBoard:
    key = f"boards.{name}"
    if isinstance(entry, str):
        entry = {"target": entry}
    if not isinstance(entry, dict):
        raise BadInputError(f"{where}: {key} should be a target string or a mapping", "e.g. target: pi@10.0.0.5")
    _no_unknown(entry, SETTING_KEYS | TARGET_KEYS | {"labels", "workers"}, where, f"{key}.")
    board_labels = entry.get("labels") or []
    if isinstance(board_labels, str):
        board_labels = [board_labels]
    if not isinstance(board_labels, list) or not all(isinstance(x, str) for x in board_labels):
        raise BadInputError(f"{where}: {key}.labels should be a list of names", "e.g. labels: [pi5, nvme]")
    layers: list[tuple[str, Mapping[str, object]]] = [("defaults", defaults)]
    layers += [(f"labels.{lab}", labels[lab]) for lab in board_labels if lab in labels]
    layers.append((key, {k: v for k, v in entry.items() if k in SETTING_KEYS}))
    settings: dict[str, tuple[object, str]] = {}  # key -> (value, where it was set)
    timeouts = job
    for layer_key, layer in layers:
        for k, v in layer.items():
            if k == "timeouts":
                timeouts = _timeouts(v, f"{where}: {layer_key}.timeouts", timeouts)
            else:
                settings[k] = (v, f"{where}: {layer_key}")
    timeouts = timeouts.check()

    def get(k: str, typ: type[Any], default: Any = None) -> Any:
        if k not in settings:
            return default
        value, at = settings[k]
        return field({k: value}, k, typ, at)

    budget_text = settings["budget"][0] if "budget" in settings else None
    ttft = get("ttft", str)
    # The budget and ttft are checked first, on their own, so an error names the layer that set them.
    if budget_text is not None:
        _parse(lambda: resolve_budget(str(budget_text)), f"{settings['budget'][1]}.budget")
    if ttft is not None:
        _parse(lambda: parse_duration_ms(ttft, "ttft"), f"{settings['ttft'][1]}.ttft")
    probe = get("probe", str, "full")
    if probe not in ("full", "quick"):
        raise BadInputError(f"{settings['probe'][1]}.probe is {probe!r}", "use full or quick (quick skips bandwidth and storage measurements)")
    plan = get("plan", str)
    spec = _spec(name, entry, where, key)
    request = _parse(lambda: build_plan_request(
        budget=None if budget_text is None else str(budget_text), ttft=ttft, ctx=get("ctx", int), models=_names(settings.get("model")),
        quants=_names(settings.get("quant")), threads=get("threads", int), plan_file=(base_dir / plan) if plan else None,
        board=spec.board, backend=get("backend", str, "cpu"), gpu_layers=get("gpu_layers", int)), f"{where}: {key}")
    return LabBoard(
        name=name, spec=spec, labels=tuple(board_labels), request=request, quick_probe=probe == "quick",
        strict_prediction=bool(get("strict_prediction", bool, False)), timeouts=timeouts.timeouts,
    )


def _spec(name: str, entry: Mapping[str, object], where: str, key: str) -> TargetSpec:
    at = f"{where}: {key}"
    if "target" in entry:
        extra = set(entry) & (TARGET_KEYS - TARGET_REFINEMENTS - {"target"})
        if extra:
            raise BadInputError(f"{at}: give 'target' or transport fields ({', '.join(sorted(extra))}), not both",
                                "keep target: user@host[:port], or replace it with transport/host/user/port")
        base: TargetSpec = _parse(lambda: resolve_target(field(entry, "target", str, at)), f"{at}.target")
    else:
        kind = field(entry, "transport", str, at)
        if kind not in KINDS:
            raise BadInputError(f"{at}.transport is {kind!r}", f"use one of: {', '.join(KINDS)}, or give target: user@host")
        base = TargetSpec(name=name, kind=kind, host=field(entry, "host", str, at, optional=True), user=field(entry, "user", str, at, optional=True),
                          port=field(entry, "port", int, at, optional=True), adb_serial=field(entry, "serial", str, at, optional=True),
                          device=field(entry, "device", str, at, optional=True), baud=field(entry, "baud", int, at, optional=True))
        if kind == "ssh" and not base.host:
            raise BadInputError(f"{at}: ssh board without 'host'", "add host: (an address or a Host alias from ~/.ssh/config)")
    host_key = field(entry, "host_key", str, at, optional=True, default=base.host_key)
    if host_key not in ("strict", "accept-new"):
        raise BadInputError(f"{at}.host_key is {host_key!r}", "use strict or accept-new")
    return replace(
        base, name=name, source=f"{where} ({key})", host_key=host_key,
        deploy_dir=field(entry, "deploy_dir", str, at, optional=True, default=base.deploy_dir),
        python=field(entry, "python", str, at, optional=True, default=base.python),
        board=field(entry, "board", str, at, optional=True, default=base.board),
        login_user=field(entry, "login_user", str, at, optional=True, default=base.login_user),
        login_password_env=field(entry, "login_password_env", str, at, optional=True, default=base.login_password_env),
    )


# --- timeouts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TimeoutLayers:
    """Effective timeouts plus where each value was set, so a conflict names the right key."""

    values: dict[str, tuple[float, str]]  # "job" | "board" | "lock_wait" | "stages.<stage>" -> (s, key)

    @property
    def timeouts(self) -> Timeouts:
        v = {k: s for k, (s, _) in self.values.items()}
        return Timeouts(job_s=v["job"], board_s=v["board"], lock_wait_s=v["lock_wait"],
                        stages_s={k.split(".", 1)[1]: s for k, s in v.items() if k.startswith("stages.")})

    def check(self) -> _TimeoutLayers:
        """stage <= board <= job, lock_wait <= board: an inner timeout never outlives the one around it.

        Values the lab file set are refused with the file and key named; defaults shrink to fit."""
        values = dict(self.values)
        job, job_at = values["job"]
        board, board_at = values["board"]
        if board > job:
            if board_at.startswith("default"):
                values["board"] = (job, job_at)  # the default board timeout is the job's: name that key
                board, board_at = job, job_at
            else:
                raise BadInputError(f"{board_at} is {fmt_duration(board)}, more than the job timeout {_key(job_at)} ({fmt_duration(job)})",
                                    "a board's timeout must fit inside the job's: lower it or raise timeouts.job")
        for k, (s, at) in self.values.items():
            if (k.startswith("stages.") or k == "lock_wait") and s > board:
                if at.startswith("default"):
                    values[k] = (board, at)
                else:
                    raise BadInputError(f"{at} is {fmt_duration(s)}, more than the board timeout {_key(board_at)} ({fmt_duration(board)})",
                                        "a stage's timeout must fit inside the board's (and the job's): lower it or raise timeouts.board")
        return _TimeoutLayers(values)


def _timeouts(raw: object, at: str, base: _TimeoutLayers | None) -> _TimeoutLayers:
    where_file, _, key = at.partition(": ")
    if not isinstance(raw, dict):
        raise BadInputError(f"{at} should be a mapping", "e.g. timeouts: {board: 30m, stages: {run: 20m}}")
    _no_unknown(raw, TIMEOUT_KEYS, where_file, f"{key}.")
    if base is None:
        values = {"job": (DEFAULT_JOB_S, "default timeouts.job"), "board": (DEFAULT_BOARD_S, "default timeouts.board"),
                  "lock_wait": (DEFAULT_LOCK_WAIT_S, "default timeouts.lock_wait")}
        values |= {f"stages.{s}": (v, f"default timeouts.stages.{s}") for s, v in DEFAULT_STAGE_S.items()}
    else:
        values = dict(base.values)
        if "job" in raw:
            raise BadInputError(f"{at}.job: the job timeout is set once, at the top level", "move it to timeouts.job")
    for k in ("job", "board", "lock_wait"):
        if k in raw:
            values[k] = (parse_duration_s(raw[k], f"{at}.{k}"), f"{at}.{k}")
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise BadInputError(f"{at}.stages should be a mapping of stage -> duration", f"stages: {', '.join(STAGES[1:])}")
    for s, v in stages.items():
        if s not in STAGES[1:]:
            raise BadInputError(f"{at}.stages.{s}: unknown stage", f"stages: {', '.join(STAGES[1:])} (the lock wait is timeouts.lock_wait)")
        values[f"stages.{s}"] = (parse_duration_s(v, f"{at}.stages.{s}"), f"{at}.stages.{s}")
    layers = _TimeoutLayers(values)
    return layers.check() if base is None else layers


# --- helpers --------------------------------------------------------------------------------


def _key(at: str) -> str:
    """'lab.yaml: timeouts.job' -> 'timeouts.job' (the file is already named once in the message)."""
    return at.rpartition(": ")[2]


def _mapping(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: key '{key}' should be a mapping", "see targets/lab.example.yaml")
    return value


def _no_unknown(data: Mapping[str, object], allowed: set[str], where: str, prefix: str) -> None:
    for k in data:
        if k not in allowed:
            import difflib

            close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            raise BadInputError(f"{where}: unknown key '{prefix}{k}'" + (f" (did you mean '{prefix}{close[0]}'?)" if close else ""),
                                f"allowed here: {', '.join(sorted(allowed))}")


def _names(setting: tuple[object, str] | None) -> tuple[str, ...]:
    """model/quant: one name or a list of names (the planner picks among them)."""
    if setting is None or setting[0] is None:
        return ()
    value, at = setting
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return tuple(value)
    raise BadInputError(f"{at}: model and quant take a name or a list of names, got {value!r}", "e.g. model: smollm2-135m-instruct")


def _parse(fn: Any, at: str) -> Any:
    """Run a parser; its error is prefixed with the file and key it came from."""
    try:
        return fn()
    except BadInputError as exc:
        raise BadInputError(f"{at}: {exc.message}", exc.hint) from exc
