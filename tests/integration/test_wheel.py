"""The wheel is a complete install: built from the source tree, installed into a fresh virtual
environment outside the checkout, `edgedeploy` runs from anywhere with the bundled targets,
profiles and templates (not the checkout's copies)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import toolchain

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
RESOURCE_DIRS = ("targets", "profiles", "templates")
# Build outputs and caches stay behind: the copy is what `pip wheel .` reads from a clean clone.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                    ".mypy_cache", ".ruff_cache", ".pytest_cache", "runs", "*.gguf", "*.gguf.partial")


def _sh(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEDEPLOY_RESOURCES", "VIRTUAL_ENV")}
    # Build from a copy so this test writes no build/ or egg-info into the checkout. symlinks=True:
    # toolchain/_resources/* stay links into the copied top-level directories, as in a clone.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=NOT_COPIED)
    wheels = tmp_path / "wheels"
    # Build isolation: pip fetches the setuptools pyproject.toml asks for (the venv's may be older).
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("edgedeploy-*.whl")

    # Every resource file of the checkout is in the wheel, under toolchain/_resources/.
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {f"toolchain/_resources/{p.relative_to(REPO).as_posix()}" for d in RESOURCE_DIRS for p in (REPO / d).rglob("*")
                if p.is_file() and not p.name.startswith(".")}
    assert expected and expected <= names, f"missing from the wheel: {sorted(expected - names)[:10]}"

    fresh = tmp_path / "fresh-venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    py = fresh / "bin" / "python"
    # The outer pip installs into the fresh interpreter; before the dependencies are visible to it,
    # so nothing there looks installed already.
    _sh([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], cwd=tmp_path, env=env)
    fresh_site = Path(_sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env).stdout.strip())
    # Dependencies (llama-cpp-python takes minutes to build) come from this venv's site-packages, named
    # by a .pth line: such a directory's own .pth files are not run, so the editable install's finder
    # for the checkout stays out.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "zz-test-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import toolchain, llama_cpp; from toolchain.core import paths; "
             "print(toolchain.__file__); print(paths.targets_dir()); print(paths.profiles_dir()); print(paths.templates_dir())")
    located = _sh([str(py), "-c", probe], cwd=elsewhere, env=env).stdout.split()
    for p in located:
        assert Path(p).is_relative_to(fresh), f"{p} is not from the installed wheel"
    assert Path(located[1], "boards", "rpi5-8gb.yaml").is_file() and Path(located[3], "run.sh.j2").is_file()

    cli = str(fresh / "bin" / "edgedeploy")
    models = _sh([cli, "models"], cwd=elsewhere, env=env)
    assert "smollm2-135m-instruct" in models.stdout and "qwen2.5-0.5b-instruct" in models.stdout
    plan = _sh([cli, "plan", "--board", "rpi5-8gb", "--budget", "120ms"], cwd=elsewhere, env=env)
    assert "selected:" in plan.stdout + plan.stderr
    version = _sh([cli, "--version"], cwd=elsewhere, env=env)
    assert version.stdout.strip() == toolchain.__version__
