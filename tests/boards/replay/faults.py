"""Faults injected into replay boards while a lab runs on them (tests/e2e/test_lab_faults.py,
bench/lab_scale.py --faults). Each fault is a thread that watches the board's disk from this
machine (board.path: through its PID 1's root) for the moment it wants, acts once, and keeps
what it saw:

    cut = SshdCut(board, model_bytes, at=0.3, down_s=2.0)    # sshd killed with 30 % uploaded
    with cut: fleet.run(...)                                  # started, then joined
    cut.fired, cut.detail                                     # {"partial_bytes": ...}

Triggers look at the deploy root: the model's `.partial` upload growing (the transfer stage),
a release's telemetry.jsonl appearing (the runner has started: the run stage).
"""

from __future__ import annotations

import glob
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.boards.replay.board import DEPLOY_ROOT, ReplayBoard

POLL_S = 0.005
SLOW_LINK = 250_000  # bytes/s: a board on poor Wi-Fi, so that the 1.4 MB upload lasts seconds and can be cut
WAIT_S = 300.0  # a trigger that never comes ends the watcher (the test then says it never fired)


class Fault(threading.Thread):
    """Waits for trigger() to return something, then act(it), once. `fired`: seconds after start."""

    kind = "fault"

    def __init__(self, board: ReplayBoard) -> None:
        super().__init__(name=f"fault-{self.kind}-{board.name}", daemon=True)
        self.board = board
        self.fired: float | None = None
        self.detail: dict[str, object] = {}
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._t0 = 0.0

    def trigger(self) -> object | None:
        raise NotImplementedError

    def act(self, seen: object) -> None:
        raise NotImplementedError

    def run(self) -> None:
        self._t0 = time.monotonic()
        try:
            while not self._halt.is_set() and time.monotonic() - self._t0 < WAIT_S:
                seen = self.trigger()
                if seen is not None:
                    self.fired = time.monotonic() - self._t0
                    self.act(seen)
                    return
                time.sleep(POLL_S)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def __enter__(self) -> Fault:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def describe(self) -> str:
        return f"{self.kind} {'never fired' if self.fired is None else f'at {self.fired:.1f} s'}" + (
            f" ({', '.join(f'{k} {v}' for k, v in self.detail.items())})" if self.detail else "")


# --- when: what the board's disk shows -----------------------------------------------------


class _DuringUpload(Fault):
    """Fires once the model's .partial upload holds at least `at` of model_bytes (transfer)."""

    def __init__(self, board: ReplayBoard, model_bytes: int, *, at: float, down_s: float | None) -> None:
        super().__init__(board)
        self.model_bytes, self.at, self.down_s = model_bytes, at, down_s

    def trigger(self) -> object | None:
        for path in glob.glob(str(self.board.path(f"{DEPLOY_ROOT}/models")) + "/*.gguf.partial"):
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size >= self.at * self.model_bytes:
                self.detail["partial_bytes"] = size
                return size
        return None


class _DuringInstall(Fault):
    """Fires while a release is being staged (releases/<id>.partial exists)."""

    def __init__(self, board: ReplayBoard, *, down_s: float | None) -> None:
        super().__init__(board)
        self.down_s = down_s

    def trigger(self) -> object | None:
        hits = glob.glob(str(self.board.path(f"{DEPLOY_ROOT}/releases")) + "/*.partial")
        if hits:
            self.detail["staging"] = Path(hits[0]).name
        return hits[0] if hits else None


class _DuringRun(Fault):
    """Fires once a release's runner has started (its telemetry.jsonl exists: the run stage)."""

    def __init__(self, board: ReplayBoard, *, down_s: float | None) -> None:
        super().__init__(board)
        self.down_s = down_s

    def trigger(self) -> object | None:
        hits = glob.glob(str(self.board.path(f"{DEPLOY_ROOT}/releases")) + "/*/telemetry.jsonl")
        if hits:
            self.detail["release"] = Path(hits[0]).parent.name
        return hits[0] if hits else None


# --- what: the fault itself --------------------------------------------------------------------


def _cut_sshd(fault: _DuringUpload | _DuringInstall | _DuringRun) -> None:
    """sshd killed (listener and sessions); back after fault.down_s, or never (None)."""
    fault.detail["killed"] = fault.board.kill_sshd()
    if fault.down_s is None:
        fault.detail["sshd"] = "stays down"
        return
    time.sleep(fault.down_s)
    fault.board.start_sshd()
    fault.detail["sshd"] = f"back after {fault.down_s:g} s"


def _reboot(fault: _DuringUpload | _DuringRun) -> None:
    fault.detail["connections forgotten"] = fault.board.reboot(fault.down_s or 0.0)
    fault.detail["down_s"] = fault.down_s


class SshdCut(_DuringUpload):
    kind = "sshd killed mid-transfer"

    def __init__(self, board: ReplayBoard, model_bytes: int, *, at: float = 0.3, down_s: float | None = 2.0) -> None:
        super().__init__(board, model_bytes, at=at, down_s=down_s)

    def act(self, seen: object) -> None:
        _cut_sshd(self)


class Outage(_DuringUpload):
    """The link goes silent for down_s mid-transfer (every packet dropped), then comes back."""

    kind = "link outage mid-transfer"

    def __init__(self, board: ReplayBoard, model_bytes: int, *, at: float = 0.2, down_s: float = 3.0) -> None:
        super().__init__(board, model_bytes, at=at, down_s=down_s)

    def act(self, seen: object) -> None:
        self.board.set_link(down=True)
        time.sleep(self.down_s or 0.0)
        self.board.set_link(down=False)
        self.detail["down_s"] = self.down_s


class RebootInTransfer(_DuringUpload):
    kind = "reboot mid-transfer"

    def __init__(self, board: ReplayBoard, model_bytes: int, *, at: float = 0.3, down_s: float = 2.0) -> None:
        super().__init__(board, model_bytes, at=at, down_s=down_s)

    def act(self, seen: object) -> None:
        _reboot(self)


class InstallCut(_DuringInstall):
    kind = "sshd killed mid-install"

    def __init__(self, board: ReplayBoard, *, down_s: float | None = 1.5) -> None:
        super().__init__(board, down_s=down_s)

    def act(self, seen: object) -> None:
        _cut_sshd(self)


class RebootInRun(_DuringRun):
    kind = "reboot mid-run"

    def __init__(self, board: ReplayBoard, *, down_s: float = 2.0) -> None:
        super().__init__(board, down_s=down_s)

    def act(self, seen: object) -> None:
        _reboot(self)


class SshdCutInRun(_DuringRun):
    """sshd killed while the runner runs, back after down_s: the link drops, the board does not reboot."""

    kind = "sshd killed mid-run"

    def __init__(self, board: ReplayBoard, *, down_s: float | None = 1.0) -> None:
        super().__init__(board, down_s=down_s)

    def act(self, seen: object) -> None:
        _cut_sshd(self)


SCENARIOS = ("clean", "lossy", "flaky", "rebooted", "dead", "cut-install", "flaky-run", "rebooted-xfer")


def scenario(name: str, board: ReplayBoard, model_bytes: int) -> Fault | None:
    """Set up one of SCENARIOS on a started board: its link, and the fault (not yet started).

    clean: nothing. lossy: 8 % of packets dropped each way, 500 kB/s, and 3 s of silence once a
    fifth of the model is up. flaky: sshd killed with 30 % of the model up, back after 1.5 s.
    rebooted: a reboot as soon as the runner starts (down 2 s). dead: sshd killed with 30 % up,
    never back. cut-install: sshd killed while the release is staged, back after 1.5 s.
    flaky-run: sshd killed while the runner runs (held 60 s), back after 1 s (no reboot). rebooted-xfer: a
    reboot with 30 % of the model up (down 2 s)."""
    if name == "clean":
        return None
    if name == "lossy":
        board.set_link(loss=0.08, rate=2 * SLOW_LINK)
        return Outage(board, model_bytes, at=0.2, down_s=3.0)
    if name == "rebooted":
        return RebootInRun(board, down_s=2.0)
    if name == "flaky-run":
        board.hold_runner(60.0)  # still running, orphaned, when edgedeploy is back on the board
        return SshdCutInRun(board, down_s=1.0)
    board.set_link(rate=SLOW_LINK)
    if name == "flaky":
        return SshdCut(board, model_bytes, at=0.3, down_s=1.5)
    if name == "dead":
        return SshdCut(board, model_bytes, at=0.3, down_s=None)
    if name == "cut-install":
        return InstallCut(board, down_s=1.5)
    if name == "rebooted-xfer":
        return RebootInTransfer(board, model_bytes, at=0.3, down_s=2.0)
    raise ValueError(f"unknown fault scenario {name!r}: one of {', '.join(SCENARIOS)}")


def outcomes_table(rows: list[Any], fired: dict[str, Fault], wall_s: float) -> str:
    """The lab report's board rows (report.json) beside the fault each board got."""
    lines = [f"{'board':<15} {'fault':<26} {'status':<40} {'class':<15} {'attempts':>8} {'wall s':>7}"]
    for r in rows:
        f = fired.get(r["name"])
        lines.append(f"{r['name']:<15} {f.kind if f else 'none':<26} {r['status']:<40} {r['failure_class'] or '-':<15} "
                     f"{r['attempts']:>8} {r['duration_s']:>7.1f}")
    lines += [f"  {name}: {f.describe()}" for name, f in fired.items()]
    return "\n".join(lines) + f"\nlab wall time {wall_s:.1f} s"
