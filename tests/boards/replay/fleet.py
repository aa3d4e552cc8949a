"""Labs of replay boards: record once from a board that really computes, then answer from it.

    rec = record(work, full=True)                # a real lab run on one board, recorded
    boards = [ReplayBoard(rec.dir).start() for _ in range(32)]
    write_ssh_config(home, boards); lab = write_lab(work / "lab.yaml", len(boards), rec.plan)

A recording is valid for the commands edgedeploy sent while it was made: the same interpreter
path, the same deploy root (DEPLOY_ROOT, the same on every replay board), the same plan. So the
plan is a file of its own (the lab's `plan:`), for a tiny synthetic model (a small file to ship,
a runner that finishes in a blink), and its prediction is the recorded measurement: the replayed
run then passes every check the first time and is not measured again.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tests.boards.replay.board import DEPLOY_ROOT, ReplayBoard
from tests.shipkit import smollm2_plan
from toolchain.core.nouns import Plan, Prediction
from toolchain.core.serde import to_json_dict
from toolchain.fleet.inventory import load_lab
from toolchain.fleet.job import LabRun, run_lab
from toolchain.models import synthetic
from toolchain.models.gguf_reader import sha256_file

# ~1.4 MB: big enough that the transfer is a real one, small enough that 32 of them are nothing.
TINY = synthetic.SyntheticSpec("synth-replay", n_layer=4, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_vocab=1024,
                               context_length=256)


@dataclass(frozen=True)
class Recording:
    dir: Path  # the answers (replay/recorder.py's files)
    plan: Path  # the plan file the lab ships (its model is the tiny GGUF beside it)
    full: bool  # recorded from a whole lab run (probe .. validate), not only a probe
    seconds: float  # how long recording took
    board: str


def tiny_model(work: Path) -> Path:
    return synthetic.write_f16(TINY, work / "synth-replay.gguf")


def write_plan(path: Path, gguf: Path, prediction: Prediction | None = None) -> Path:
    plan: Plan = smollm2_plan(gguf, ctx=TINY.context_length, threads=1, budget_ms=1000.0)
    assert plan.selected is not None
    sel = replace(plan.selected, model=TINY.name, quant="F16", params=TINY.params, file_bytes=gguf.stat().st_size)
    if prediction is not None:
        sel = replace(sel, predicted=prediction)
    path.write_text(json.dumps(to_json_dict(replace(plan, selected=sel)), indent=2) + "\n")
    return path


def aliases(n: int) -> list[str]:
    return [f"b{i:02d}" for i in range(n)]


def write_lab(path: Path, n: int, plan: Path | None, *, name: str = "replay", python: str = sys.executable,
              retries: str = "{attempts: 1}", timeouts: str = "{job: 30m, lock_wait: 2m}", names: list[str] | None = None) -> Path:
    """Boards b00..b<n-1>, or `names` (aliases in ~/.ssh/config, write_ssh_config), all with one
    deploy root and interpreter: the recording's. retries and timeouts: the lab file's mappings, as YAML."""
    lines = [f"name: {name}", f"retries: {retries}", f"timeouts: {timeouts}", "boards:"]
    extra = f", plan: {plan}" if plan is not None else ""
    for alias in names or aliases(n):
        lines.append(f"  {alias}: {{transport: ssh, host: {alias}, python: {python}, deploy_dir: {DEPLOY_ROOT}, probe: quick{extra}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ssh_config(home: Path, boards: list[ReplayBoard], names: list[str] | None = None) -> None:
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "config").write_text("".join(b.ssh_config(a) for a, b in zip(names or aliases(len(boards)), boards, strict=True)))


def run(lab: Path, *, probe_only: bool, parallel: int | None = None, names: list[str] | None = None,
        history_url: str | None = None) -> LabRun:
    loaded = load_lab(lab)
    if names is not None:
        loaded = replace(loaded, boards=tuple(b for b in loaded.boards if b.name in names))
    return run_lab(loaded, parallel=parallel, probe_only=probe_only, history_url=history_url)


def failure(result: LabRun) -> str | None:
    bad = [b for b in result.doc["boards"] if not b["passed"]]
    return f"{bad[0]['name']}: {bad[0]['status']}: {bad[0]['error']}" if bad else None


def record(work: Path, home: Path, *, full: bool, board: str = "rpi4-4gb") -> Recording:
    """One lab run on a board that computes everything (record mode), kept as the recording.

    A full run is recorded twice: the first measures the tiny model on this machine, the second
    runs the plan that predicts that measurement (and is the one kept). `home` is the HOME whose
    ~/.ssh/config the lab reads (it is rewritten)."""
    t0 = time.monotonic()
    rec_dir = work / "recording"
    gguf = tiny_model(work)
    plan = write_plan(work / "plan.json", gguf)
    prediction: Prediction | None = None
    for attempt in range(2 if full else 1):
        shutil.rmtree(rec_dir, ignore_errors=True)
        rec_dir.mkdir(parents=True)
        if prediction is not None:
            write_plan(plan, gguf, prediction)
        with ReplayBoard(rec_dir, board=board, record=True) as b:
            write_ssh_config(home, [b])
            # a history of its own: the two runs differ in speed, which is not a regression
            result = run(write_lab(work / "record.yaml", 1, plan, name="record"), probe_only=not full,
                         history_url=f"sqlite:///{work / f'record-{attempt}.sqlite'}")
        why = failure(result)
        if why is not None:
            raise RuntimeError(f"recording run {attempt + 1} on {board} failed: {why} (see {result.run_dir})")
        report = result.outcomes[0].report
        tel = report.telemetry if report is not None else None
        if full:
            assert tel is not None and tel.model_sha256 == sha256_file(gguf), "the recorded run shipped another model"
            prediction = Prediction(decode_tokens_per_s=tel.decode_tokens_per_s, decode_ms_per_token=1000.0 / tel.decode_tokens_per_s,
                                    prefill_tokens_per_s=tel.prefill_tokens_per_s or tel.decode_tokens_per_s,
                                    peak_memory_bytes=tel.peak_rss_bytes, weights_bytes=gguf.stat().st_size,
                                    bench_rss_bytes=tel.peak_rss_bytes)
    return Recording(rec_dir, plan, full, time.monotonic() - t0, board)
