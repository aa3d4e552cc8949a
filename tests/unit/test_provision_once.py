"""One llama-cpp-python build per board kind, however many boards of it start at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from toolchain.core.errors import TargetError
from toolchain.deploy.provision import fill_once


def _race(tmp_path: Path, build: object) -> tuple[list[str | BaseException], list[str]]:
    wheels = tmp_path / "x86_64-glibc2.36-cp311-avx2"
    logs: list[str] = []
    out: list[str | BaseException] = []

    def board(name: str) -> None:
        try:
            out.append(fill_once(wheels, build, lambda: (wheels / "llama.whl").exists(), logs.append, name))  # type: ignore[arg-type]
        except TargetError as exc:
            out.append(exc)

    threads = [threading.Thread(target=board, args=(f"pi-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out, logs


def test_the_first_board_builds_and_the_others_wait_then_install(tmp_path: Path) -> None:
    calls = []

    def build() -> str:
        calls.append(1)
        time.sleep(0.5)
        (tmp_path / "x86_64-glibc2.36-cp311-avx2").mkdir(exist_ok=True)
        (tmp_path / "x86_64-glibc2.36-cp311-avx2" / "llama.whl").write_text("w")
        return "built on the board"

    out, logs = _race(tmp_path, build)
    assert len(calls) == 1 and sorted(map(str, out)) == ["built on the board"] + ["wheelhouse (built for another board of this kind meanwhile)"] * 3
    assert sum("waiting for another board's build" in m for m in logs) == 3


def test_a_failed_build_is_reported_once(tmp_path: Path) -> None:
    calls = []

    def build() -> str:
        calls.append(1)
        time.sleep(0.5)
        raise TargetError("pip wheel failed on the board (exit 1): no cmake", "install cmake")

    out, _ = _race(tmp_path, build)
    assert len(calls) == 1  # the boards that waited do not build again
    errors = [str(e) for e in out]
    assert sum(e == "pip wheel failed on the board (exit 1): no cmake" for e in errors) == 1
    assert sum("not built again: the build of x86_64-glibc2.36-cp311-avx2 failed on pi-" in e for e in errors) == 3
    with pytest.raises(TargetError, match="no cmake"):  # a later run, not waiting on anyone, tries again
        fill_once(tmp_path / "x86_64-glibc2.36-cp311-avx2", build, lambda: False, lambda m: None, "pi-9")
    assert len(calls) == 2
