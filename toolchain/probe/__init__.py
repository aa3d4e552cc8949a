"""Probe a target: one script, one round trip, pure parsers -> HostFacts.

Stage 1 gathers every quick fact in one script. Unless --quick, stage 2 (a second round trip)
measures bandwidth and storage speed and runs the slow tools; it needs stage 1's decode cores.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from toolchain.core.nouns import HostFacts, TargetSpec
from toolchain.probe.assemble import assemble_facts
from toolchain.probe.commands import FACTS, MEASUREMENTS
from toolchain.probe.gather import FactCommand, build_script, split_output
from toolchain.transports.base import Transport

QUICK_TIMEOUT_S = 30
MEASURE_TIMEOUT_S = 120


def run_stage(transport: Transport, facts: list[FactCommand], *, deploy_dir: str, python: str,
              env: Mapping[str, str] | None = None, timeout: float = QUICK_TIMEOUT_S) -> dict[str, str]:
    script = build_script(facts, deploy_dir=deploy_dir, python=python, env=env)
    return split_output(transport.run_script(script, timeout=timeout).stdout)


def measurement_env(raw: dict[str, str], deploy_dir: str) -> dict[str, str]:
    """Stage 2's inputs from stage 1: the decode thread count and the cores to pin readers to."""
    cpu = assemble_facts(raw, target="", deploy_dir=deploy_dir, quick=True).cpu
    return {"EDGEDEPLOY_THREADS": str(cpu.recommended_threads), "EDGEDEPLOY_CPUS": ",".join(map(str, cpu.decode_cpu_ids))}


def probe(
    transport: Transport, spec: TargetSpec, *, deploy_dir: str, quick: bool = False, record: Path | None = None
) -> HostFacts:
    start = time.monotonic()
    python = spec.python or "python3"
    raw = run_stage(transport, FACTS, deploy_dir=deploy_dir, python=python)
    round_trips = 1
    if not quick:
        env = measurement_env(raw, deploy_dir)
        raw.update(run_stage(transport, MEASUREMENTS, deploy_dir=deploy_dir, python=python, env=env, timeout=MEASURE_TIMEOUT_S))
        round_trips = 2
    elapsed = time.monotonic() - start
    if record is not None:
        from toolchain.probe.record import write_recording

        write_recording(record, raw, target=spec.name)
    return assemble_facts(raw, target=spec.name, deploy_dir=deploy_dir, elapsed_s=elapsed, quick=quick, round_trips=round_trips)
