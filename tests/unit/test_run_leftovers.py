"""A run whose link dropped while the board stayed up leaves its runner running, orphaned: the
retry must not measure beside it. deploy/run.py stops what names the release's run.sh/runner.py
(and its process group), nothing else. Real sh and processes on this machine (LocalTransport)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from toolchain.core.nouns import Release
from toolchain.deploy.run import _stop_leftovers
from toolchain.transports.local import LocalTransport


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def group(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc: field 5 of stat)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split() if entry.isdigit() else []
        except OSError:
            continue
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def test_the_cut_release_s_runner_and_its_children_are_stopped_and_nothing_else(tmp_path: Path) -> None:
    rel_dir, other_dir = tmp_path / "releases" / "r1", tmp_path / "releases" / "r2"
    for d in (rel_dir, other_dir):
        d.mkdir(parents=True)
        (d / "run.sh").write_text("sleep 300 & sleep 301\n")  # a runner and a child of its own, as python is
    # each started in a session of its own, as sshd starts a command: orphaned when that session dies
    cut = subprocess.Popen(["sh", str(rel_dir / "run.sh"), "bench"], start_new_session=True)
    other = subprocess.Popen(["sh", str(other_dir / "run.sh"), "bench"], start_new_session=True)
    try:
        time.sleep(0.3)
        children = group(cut.pid)
        assert len(children) == 3  # sh and its two sleeps
        release = Release(id="r1", deploy_root=str(tmp_path), path=str(rel_dir), model_path="", model_sha256="",
                          model_bytes_sent=0, model_already_present=True)
        with LocalTransport() as t:
            assert _stop_leftovers(t, release) == 1
        cut.wait(timeout=5)
        time.sleep(0.2)
        assert group(cut.pid) == []
        assert alive(other)  # another release's runner is not this run's leftover
    finally:
        for proc in (cut, other):
            if alive(proc):
                os.killpg(proc.pid, 9)
                proc.wait()
