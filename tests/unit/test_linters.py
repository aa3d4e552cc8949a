"""ruff and mypy (strict, configured in pyproject.toml) are part of the suite: a lint or type error
fails a test with the tool's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The tools of the interpreter running the tests (.venv/bin), not whichever is first on PATH.
# Not resolved: a venv's python is a symlink to the base interpreter, whose bin has no ruff.
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"no {name} in {BIN}: run scripts/setup.sh (it installs the [dev] extras), or: pip install -e '.[dev]'")
    return str(path)


def _check(argv: list[str], timeout: float) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:  # pytest.fail, not assert: the tool's report alone, without a repr of proc
        pytest.fail(f"{Path(argv[0]).name} {' '.join(argv[1:])} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff() -> None:
    _check([_tool("ruff"), "check", "toolchain", "tests", "bench"], timeout=120)


def test_mypy() -> None:
    # No arguments: pyproject.toml names the packages, strict mode and the exclusions.
    _check([_tool("mypy")], timeout=600)
