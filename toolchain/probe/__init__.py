"""Probe a target: one script, one round trip, pure parsers -> HostFacts."""

from __future__ import annotations

import time
from pathlib import Path

from toolchain.models import HostFacts, TargetSpec
from toolchain.probe.assemble import assemble_facts
from toolchain.probe.commands import FACTS
from toolchain.probe.gather import build_script, split_output
from toolchain.transports.base import Transport


def gather_raw(transport: Transport, *, deploy_dir: str, python: str, quick: bool) -> dict[str, str]:
    script = build_script(FACTS, deploy_dir=deploy_dir, python=python, quick=quick)
    result = transport.run_script(script, timeout=30 if quick else 120)
    return split_output(result.stdout)


def probe(
    transport: Transport, spec: TargetSpec, *, deploy_dir: str, quick: bool = False, record: Path | None = None
) -> HostFacts:
    start = time.monotonic()
    raw = gather_raw(transport, deploy_dir=deploy_dir, python=spec.python or "python3", quick=quick)
    if record is not None:
        from toolchain.probe.record import write_recording

        write_recording(record, raw, target=spec.name)
    return assemble_facts(raw, target=spec.name, deploy_dir=deploy_dir, elapsed_s=time.monotonic() - start)
