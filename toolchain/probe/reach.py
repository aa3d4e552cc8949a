"""Reaching a target before any planning: its python, its deploy root, its facts.

Kept apart from pipeline.py so `edgedeploy probe` loads only what probing needs (the planner,
packager and templates are not imported): a quick probe is mostly import time otherwise.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from toolchain.core.events import Events, NullEvents
from toolchain.core.nouns import HostFacts, TargetSpec
from toolchain.deploy.releases import default_deploy_root
from toolchain.probe import probe as run_probe
from toolchain.transports.base import Transport


def target_python(spec: TargetSpec, facts: HostFacts | None = None) -> str:
    if spec.python:
        return spec.python
    if spec.kind == "local":
        return sys.executable  # the interpreter that has this toolchain's llama-cpp-python
    return (facts.runtime.python_path if facts and facts.runtime.python_path else None) or "python3"


def deploy_root(spec: TargetSpec, transport: Transport | None, override: str | None = None) -> str:
    """Absolute deploy root; with no transport, a `~/...` path the probe script expands itself
    (saves the round trip that asks the target for $HOME)."""
    spec = replace(spec, deploy_dir=override) if override else spec
    return default_deploy_root(spec, transport.home() if transport is not None else "~")


def probe_target(spec: TargetSpec, transport: Transport, root: str, events: Events | None = None, *, quick: bool = False,
                 record: Path | None = None) -> HostFacts:
    spec = replace(spec, python=target_python(spec))
    with (events or NullEvents()).busy(f"probing {spec.name}"):
        return run_probe(transport, spec, deploy_dir=root, quick=quick, record=record)


def runtime_facts(transport: Transport, python: str, facts: HostFacts) -> HostFacts:
    """facts with the runtime of `python` (the one provisioning chose, which may not be the one the
    probe ran): its llama.cpp backends and devices are what a plan's backend is checked against."""
    from toolchain.device import device_source
    from toolchain.probe.assemble import runtime_from

    raw = {}
    for key, name in (("runtime", "runtime_info.py"), ("llama", "llama_info.py")):
        raw[key] = transport.run([python, "-c", device_source(name)], timeout=120, check=False).stdout
    unknown = [u for u in facts.unknown if not u.fact.startswith("runtime.")]
    return replace(facts, runtime=runtime_from(raw, False, unknown), unknown=unknown)
