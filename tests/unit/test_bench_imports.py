"""The benchmarks import what they use from the package (a moved module must not go unnoticed
until someone runs a bench). Importing runs no measurement: each bench runs under __main__ only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCHES = sorted((REPO / "bench").glob("*.py"))


@pytest.mark.parametrize("path", BENCHES, ids=[p.stem for p in BENCHES])
def test_bench_imports(path: Path) -> None:
    name = f"bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
