"""Shared by the probe tests (no tests here): loading tests/fixtures/probe, one YAML per recorded
output (command, source, output, expected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolchain.core.serde import to_json_dict
from toolchain.probe.commands import ALL_FACTS
from toolchain.probe.parsers import PARSERS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "probe"
REQUIRED = ("command", "source", "output", "expected")


def fixture_files(root: Path = FIXTURES) -> list[Path]:
    return sorted(p for p in root.glob("*/*.yaml"))


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def check_fixture(path: Path) -> None:
    """The fixture is complete, names where its output came from, was made by the command the
    probe runs today (or says why not), and the parser still gives the expected result."""
    fx = load(path)
    fact = path.parent.name
    missing = [k for k in REQUIRED if k not in fx]
    assert not missing, f"{path}: missing {missing}"
    assert fact in PARSERS, f"{path}: no parser for fact {fact!r}"
    assert str(fx["source"]).strip(), f"{path}: empty source"
    current = next(f.command for f in ALL_FACTS if f.name == fact)
    if fx["command"] != current:
        assert fx.get("note"), f"{path}: recorded with another command than the probe runs now: re-record it, or add a note saying why it still applies"
    got = to_json_dict(PARSERS[fact](fx["output"]))
    assert got == fx["expected"], f"{path}: parser output changed:\n got      {got}\n expected {fx['expected']}"


def board_raw(case: str, root: Path = FIXTURES) -> dict[str, str]:
    """Every fact output recorded for one board case (file <case>.yaml or <case>-empty.yaml)."""
    raw: dict[str, str] = {}
    for path in fixture_files(root):
        if path.stem in (case, f"{case}-empty"):
            raw[path.parent.name] = str(load(path)["output"])
    return raw


def output(fact: str, case: str) -> str:
    return str(load(FIXTURES / fact / f"{case}.yaml")["output"])
