"""The board lock (fleet/locks.py) on this machine: a holder that was a process of this host and is
gone is taken over at once; a live one, or one from another host, is waited for (its expiry)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from toolchain.core.errors import EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM, FailureClass, Interrupted, failure_class_of
from toolchain.fleet.locks import LOCK_NAME, BoardLock, LockBusy
from toolchain.transports.local import LocalTransport


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def plant(root: Path, **fields: object) -> None:
    """A lock as another holder left it (expiring in an hour)."""
    lock = root / LOCK_NAME
    lock.mkdir(parents=True)
    now = int(subprocess.run(["date", "+%s"], capture_output=True, text=True, check=True).stdout)
    doc = {"token": "0" * 32, "acquired_at": now - 5, "expires_at": now + 3600, "owner": "ci@elsewhere pid 1", "what": "ship", **fields}
    (lock / "owner.json").write_text(json.dumps(doc) + "\n")


def test_a_dead_local_holder_is_taken_over_at_once(tmp_path: Path) -> None:
    plant(tmp_path, host=os.uname().nodename, pid=dead_pid(), pid_ns=os.readlink("/proc/self/ns/pid"))
    lock = BoardLock(LocalTransport(), str(tmp_path), lab=None, what="ship")
    assert lock.acquire(wait_s=0) < 5
    assert lock.took_over is not None and lock.took_over.what == "ship" and lock.took_over.since_s is not None
    assert lock.token in (tmp_path / LOCK_NAME / "owner.json").read_text()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("who", ["alive", "other-host", "other-pid-namespace"])
def test_a_holder_that_may_be_alive_is_not_taken_over(tmp_path: Path, who: str) -> None:
    fields = {"host": os.uname().nodename, "pid": os.getppid(), "pid_ns": os.readlink("/proc/self/ns/pid")}
    if who == "other-host":
        fields.update(host="another-ci-runner", pid=dead_pid())
    elif who == "other-pid-namespace":
        fields.update(pid=dead_pid(), pid_ns="pid:[1]")
    plant(tmp_path, **fields)
    with pytest.raises(LockBusy, match=r"board is locked by ci@elsewhere pid 1 \(edgedeploy ship, no CI job, held for \d+ s, expires in"):
        BoardLock(LocalTransport(), str(tmp_path), lab=None, busy_hint="give --wait").acquire(wait_s=0)


def test_interrupted_exits_128_plus_the_signal_and_names_the_stage() -> None:
    assert [Interrupted(s).exit_code for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)] == [EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM]
    stopped = Interrupted(signal.SIGTERM).at("run").at("validate")  # the first stage named is the one it stopped
    assert stopped.message == "interrupted by SIGTERM during the run stage" and stopped.stage == "run"
    assert isinstance(stopped, KeyboardInterrupt) and not isinstance(stopped, Exception)
    assert failure_class_of(EXIT_SIGTERM) is FailureClass.INFRASTRUCTURE
