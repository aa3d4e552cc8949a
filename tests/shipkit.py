"""Helpers for the ship/runner/provision tests: a plan without a planner, bundles, target specs
for the emulated SSH boards. Not a test module (no test_ prefix)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.core.events import NullEvents
from toolchain.core.nouns import Basis, Budget, Bundle, Plan, Prediction, Selected, TargetSpec
from toolchain.deploy.package import package
from toolchain.deploy.pipeline import DeployRequest, cached_sha256, ship
from toolchain.verdict.report import Report, ShipFailed


@dataclass(frozen=True)
class Shipped:
    """A ship's outcome as the CLI sees it: exit code, report.json document, run directory."""

    exit_code: int
    report: dict[str, Any]
    run_dir: Path
    value: Report


def ship_request(request: DeployRequest) -> Shipped:
    """pipeline.ship (it opens the connection: tests patch toolchain.transports.factory.connect)."""
    try:
        report, code = ship(request, NullEvents()), 0
    except ShipFailed as failed:
        report, code = failed.report, failed.exit_code
    return Shipped(code, report.document(), Path(report.run_dir), report)


def host_board_dir(base: Path, name: str = "this-host") -> Path:
    """A board folder with no overlay: the emulated board is this machine (x86_64, this libc and
    CPU), reached over real SSH. Made per test, because tests/boards/ boards have fixed facts."""
    d = base / name
    (d / "root").mkdir(parents=True, exist_ok=True)
    (d / "board.yaml").write_text(f"name: {name}\ndescription: this machine, no overlay\nhostname: {name}\n")
    return d


def smollm2_plan(gguf: Path, *, ctx: int = 512, threads: int = 2, budget_ms: float = 1000.0, use_mmap: bool = True) -> Plan:
    pred = Prediction(decode_tokens_per_s=50.0, decode_ms_per_token=20.0, prefill_tokens_per_s=500.0,
                      peak_memory_bytes=200 << 20, weights_bytes=gguf.stat().st_size)
    sel = Selected(model="smollm2-135m-instruct", quant="Q4_1", params=134_515_008, file_bytes=gguf.stat().st_size, ctx=ctx,
                   kv_type="f16", threads=threads, mode="resident", predicted=pred, use_mmap=use_mmap, gguf_path=str(gguf))
    basis = Basis(usable_memory_bytes=8 << 30, bandwidth_bytes_per_s=10e9, efficiency=0.5)
    return Plan(selected=sel, candidates=[], basis=basis, budget=Budget(decode_ms_per_token=budget_ms, source=f"{budget_ms}ms"))


def bundle_for(gguf: Path, out: Path, *, python: str = sys.executable, **plan_kw: object) -> Bundle:
    return package(smollm2_plan(gguf, **plan_kw), gguf, out, python=python, model_sha256=cached_sha256(gguf))  # type: ignore[arg-type]


def ssh_spec(board: object, *, python: str | None = sys.executable, deploy_dir: str | None = None) -> TargetSpec:
    """A TargetSpec for an SshBoard (the board's ssh_config supplies key and known_hosts)."""
    return TargetSpec(name=board.name, kind="ssh", host=board.name, python=python, deploy_dir=deploy_dir,  # type: ignore[attr-defined]
                      source="test")
