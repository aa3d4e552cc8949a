"""A real `edgedeploy ship` stopped by SIGTERM, SIGINT and SIGKILL at each stage, on this machine
and over real SSH; two deployments to one board at once.

Each stopped ship must exit 128 + the signal, write its report naming the stage and the signal,
leave the release that was current before current, and leave no runner process; after SIGKILL the
runner stops by itself (it watches the stdin the host holds open) and the next ship says what the
killed one left. The board lock (fleet/locks.py, the lab's) keeps a second ship off a busy board.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.boards.sshd import SshBoard
from tests.shipkit import host_board_dir
from toolchain.core.paths import cache_dir
from toolchain.fleet.locks import LOCK_NAME, BoardLock
from toolchain.transports.local import LocalTransport

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
STAGES = ("connect", "lock", "probe", "provision", "plan", "dry_load", "package", "transfer", "run", "validate")
RUNNER_START_S = 60.0  # from the ship's start until its runner is up (a probe, a dry load: seconds here)

# The real CLI, with a signal sent to itself as a stage begins: the only change is the hook in the
# event sink, so the signal lands exactly at that stage (an outside signal could not aim so well).
# With SIGNAL_DELAY_S, the signal comes that long into the stage (from a timer thread).
DRIVER = textwrap.dedent(f"""
    import os, sys, threading
    sys.path.insert(0, {str(REPO)!r})
    from toolchain.cli import console
    stage, signum = sys.argv[1], int(sys.argv[2])
    delay = float(os.environ.get("SIGNAL_DELAY_S", "0"))
    original = console.ConsoleEvents.stage
    def at(self, name):
        if name == stage and delay:
            threading.Timer(delay, os.kill, (os.getpid(), signum)).start()
        elif name == stage:
            os.kill(os.getpid(), signum)
        original(self, name)
    console.ConsoleEvents.stage = at
    sys.argv = ["edgedeploy", *sys.argv[3:]]
    from toolchain.cli.app import run
    run()
""")


class Board:
    """Where ships go: the CLI's target string, its deploy root on this machine's filesystem, env."""

    def __init__(self, target: str, deploy: Path, env: dict[str, str]) -> None:
        self.target, self.deploy, self.env = target, deploy, env

    def argv(self, *extra: str) -> list[str]:
        return ["ship", "--target", self.target, "--budget", "10s", "--model", "smollm2-135m-instruct", "--quant", "Q4_1",
                "--deploy-dir", str(self.deploy), "--json", *extra]

    def start(self, *extra: str, stop_at: str | None = None, signum: int = signal.SIGTERM, delay_s: float = 0.0) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-c", DRIVER, stop_at, str(signum)] if stop_at else ["edgedeploy"]
        return subprocess.Popen([*cmd, *self.argv(*extra)], env={**self.env, "SIGNAL_DELAY_S": str(delay_s)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def ship(self, *extra: str) -> tuple[int, dict[str, Any], str]:
        return finish(self.start(*extra))

    def current(self) -> str:
        return os.readlink(self.deploy / "current").rsplit("/", 1)[-1]

    def runners(self) -> list[int]:
        """Runner processes of this deploy root, whoever started them (seen in this machine's /proc:
        an SSH board's PID namespace is a child of ours)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"/runner.py") and a.startswith(str(self.deploy).encode()) for a in cmd) and b"bench" in cmd:
                found.append(int(pid))
        return found

    def wait_for_runner(self, proc: subprocess.Popen[str] | None = None, timeout: float = RUNNER_START_S) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := self.runners()) and any(self.deploy.glob("releases/*/runner.pid")):
                return found[0]
            assert proc is None or proc.poll() is None, f"the ship ended before its runner started: {finish(proc)}"
            time.sleep(0.02)
        raise AssertionError("no runner started")


def alive(pid: int) -> bool:
    """Running (a zombie is not: where PID 1 does not reap, a killed orphan stays one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    try:
        doc = json.loads(out)
    except ValueError:
        doc = {}
    return proc.returncode, doc, err


def no_runner_within(board: Board, seconds: float) -> float:
    """Seconds until no runner of the board is left (fails past `seconds`)."""
    t0 = time.monotonic()
    while board.runners():
        assert time.monotonic() - t0 < seconds, f"runner still alive after {seconds} s: {board.runners()}"
        time.sleep(0.02)
    return time.monotonic() - t0


def assert_stopped(board: Board, rc: int, doc: dict[str, Any], err: str, stage: str, signum: int, before: str) -> None:
    name = signal.Signals(signum).name
    assert rc == 128 + signum, err
    assert doc["failed_stage"] == stage and doc["exit_code"] == rc, doc
    assert doc["error"] == f"interrupted by {name} during the {stage} stage", doc
    assert f"error: interrupted by {name} during the {stage} stage" in err and "Traceback" not in err
    assert f"interrupted by {name} during the {stage} stage" in (Path(doc["run_dir"]) / "report.md").read_text()
    assert board.current() == before  # the previous release stays current
    assert doc["release"] is None or doc["release"]["activated"] is False
    no_runner_within(board, 5)
    assert not list(board.deploy.glob("releases/*/runner.pid"))
    assert not (board.deploy / LOCK_NAME).exists()  # released on the way out


def stage_cases(signums: dict[str, int]) -> list[Any]:
    return [pytest.param(s, signums.get(s, signal.SIGTERM), id=f"{s}-{signal.Signals(signums.get(s, signal.SIGTERM)).name}")
            for s in STAGES]


# --- this machine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Board:
    """One passing ship, made once: every stopped ship after it must leave that release current."""
    base = tmp_path_factory.mktemp("signals-local")
    env = {**os.environ, "EDGEDEPLOY_HOME": str(base / "home"), "EDGEDEPLOY_CALIBRATE": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("EDGEDEPLOY_RUNS", None)
    board = Board("local", base / "deploy", env)
    rc, _doc, err = board.ship()
    assert rc == 0, err
    return board


@pytest.mark.parametrize(("stage", "signum"), stage_cases({"probe": signal.SIGINT, "transfer": signal.SIGINT}))
def test_a_signal_at_each_stage_stops_the_local_ship_cleanly(local: Board, stage: str, signum: int) -> None:
    before = local.current()
    rc, doc, err = finish(local.start(stop_at=stage, signum=signum))
    assert_stopped(local, rc, doc, err, stage, signum, before)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_runner_runs_stops_it(local: Board, signum: int) -> None:
    before = local.current()
    proc = local.start()
    runner = local.wait_for_runner(proc)
    t0 = time.monotonic()
    os.kill(proc.pid, signum)
    rc, doc, err = finish(proc)
    took = time.monotonic() - t0
    print(f"\nlocal {signal.Signals(signum).name} -> exit: {took:.2f} s")
    assert not alive(runner)  # stopped before edgedeploy exited
    assert_stopped(local, rc, doc, err, "run", signum, before)
    assert took < 5


def test_a_signal_while_a_new_server_starts_puts_the_previous_release_back(local: Board) -> None:
    """--mode serve: the release passed and was made current, its server is starting: undone."""
    import llama_cpp.server.app  # noqa: F401  (the [server] extra is a dependency: fail, never skip)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = local.current()
    rc, doc, err = finish(local.start("--mode", "serve", "--serve-port", str(port), stop_at="serve", delay_s=1.0))
    assert_stopped(local, rc, doc, err, "serve", signal.SIGTERM, before)
    assert any(n.startswith(f"switched back to release {before}: this run had made ") for n in doc["notes"]), doc["notes"]
    assert any(n.startswith("stopped the server of release ") for n in doc["notes"]), doc["notes"]
    assert not (local.deploy / "serve" / "serve.pid").exists() and not (local.deploy / "serve" / "server.pid").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing serves there


def test_sigkill_the_runner_stops_itself_and_the_next_ship_says_so(local: Board) -> None:
    before = local.current()
    proc = local.start()
    local.wait_for_runner(proc)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    no_runner_within(local, 5)
    took = time.monotonic() - t0  # from the kill
    print(f"\nlocal SIGKILL -> orphaned runner gone after {took:.2f} s")
    assert local.current() == before
    assert (local.deploy / LOCK_NAME).exists()  # the killed ship's lock: its holder is dead
    (left,) = local.deploy.glob("releases/*/runner.pid")
    assert "its host went away" in left.read_text()

    rc, doc, err = local.ship()  # not blocked by the dead ship's lock; says what it found
    assert rc == 0, err
    notes = "\n".join(doc["notes"])
    assert f"cleared the pid file of release {left.parent.name}'s runner" in notes and "its host went away" in notes
    assert "took over the board lock from" in notes and "edgedeploy ship" in notes
    assert local.current() == doc["release"]["id"] and not list(local.deploy.glob("releases/*/runner.pid"))


def test_a_runner_that_could_not_tell_is_stopped_by_the_next_ship(local: Board) -> None:
    """Where the runner cannot see its host go (a serial console), the next ship stops it."""
    release = local.deploy / "current"
    orphan = subprocess.Popen(["sh", str(release / "run.sh"), "bench", "--out", str(local.deploy / "orphan.jsonl"), "--sustained-s", "120"],
                              env={**local.env, "EDGEDEPLOY_PYTHON": sys.executable}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        pid = local.wait_for_runner()
        rel = local.current()
        rc, doc, err = local.ship()
        assert rc == 0, err
        assert f"stopped the runner of release {rel} (pid {pid}) that an earlier ship left running" in doc["notes"], doc.get("notes")
        assert orphan.wait(timeout=10) != 0 and not local.runners()
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)


# --- one deployment per board ------------------------------------------------------------------


def test_a_second_ship_fails_naming_the_first_or_waits_for_it(local: Board) -> None:
    first = local.start()
    local.wait_for_runner(first)
    rc, doc, err = local.ship()
    assert rc == 3, err
    assert doc["failed_stage"] == "lock" and f"pid {first.pid} (edgedeploy ship, no CI job, held for" in doc["error"], doc
    assert "--wait" in doc["hint"]
    waiter = local.start("--wait", "5m")
    rc1, doc1, err1 = finish(first)
    rc2, doc2, err2 = finish(waiter)
    assert rc1 == 0 and rc2 == 0, (err1, err2)
    assert local.current() == doc2["release"]["id"] != doc1["release"]["id"]  # the later one, whole
    for d in (doc1, doc2):  # each run measured alone: its own telemetry, one result in it
        lines = (Path(d["run_dir"]) / "telemetry.jsonl").read_text().splitlines()
        assert sum(json.loads(x)["event"] == "result" for x in lines) == 1


def test_rollback_and_ship_respect_a_lab_holding_the_board(local: Board) -> None:
    with BoardLock(LocalTransport(), str(local.deploy), lab="nightly", ttl_s=30, owner="ci-runner-7 pid 99", job="4242").held(wait_s=5):
        proc = subprocess.run(["edgedeploy", "rollback", "local", "--deploy-dir", str(local.deploy)], env=local.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and "locked by ci-runner-7 pid 99 (CI job 4242, lab nightly" in proc.stderr, proc.stderr
        holder = BoardLock(LocalTransport(), str(local.deploy), lab="x")
        assert holder.try_acquire() is not None
    released = threading.Event()

    def hold_then_release() -> None:
        with BoardLock(LocalTransport(), str(local.deploy), lab="nightly", ttl_s=30).held(wait_s=5):
            released.wait(2)

    t = threading.Thread(target=hold_then_release)
    t.start()
    time.sleep(0.5)
    try:  # it waits, then goes on: stopped at the probe, as a full ship would cost a bench
        rc, doc, err = finish(local.start("--wait", "1m", stop_at="probe"))
        assert rc == 143 and doc["failed_stage"] == "probe", err
        assert "local is locked by" in err and "lab nightly" in err and "waiting up to 60 s" in err, err
    finally:
        released.set()
        t.join()


# --- over SSH -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssh(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Board]:
    """This machine behind a real sshd, named by a ~/.ssh/config alias, its python3 the one with llama-cpp-python."""
    base = tmp_path_factory.mktemp("signals-ssh")
    board_dir = host_board_dir(base)
    (board_dir / "bin").mkdir()
    (board_dir / "bin" / "python3").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (board_dir / "bin" / "python3").chmod(0o755)
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    with SshBoard(board_dir) as b:
        (home / ".ssh" / "config").write_text(b.ssh_config_path.read_text().replace(f"Host {b.name}\n", "Host sigboard\n", 1))
        env = {**os.environ, "HOME": str(home), "EDGEDEPLOY_HOME": str(base / "edgedeploy"), "EDGEDEPLOY_CALIBRATE": "0",
               "EDGEDEPLOY_CACHE": str(cache_dir()), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        for var in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD", "EDGEDEPLOY_RUNS", "CI_JOB_ID", "GITHUB_RUN_ID"):
            env.pop(var, None)
        board = Board("sigboard", base / "deploy", env)
        rc, _doc, err = board.ship()
        assert rc == 0, err
        yield board


@pytest.mark.parametrize(("stage", "signum"), stage_cases({"provision": signal.SIGINT}))
def test_a_signal_at_each_stage_stops_the_ssh_ship_cleanly(ssh: Board, stage: str, signum: int) -> None:
    before = ssh.current()
    rc, doc, err = finish(ssh.start(stop_at=stage, signum=signum))
    assert_stopped(ssh, rc, doc, err, stage, signum, before)


def test_sigterm_while_the_runner_runs_on_an_ssh_board(ssh: Board) -> None:
    before = ssh.current()
    proc = ssh.start()
    ssh.wait_for_runner(proc)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    rc, doc, err = finish(proc)
    print(f"\nssh SIGTERM -> exit: {time.monotonic() - t0:.2f} s")
    assert_stopped(ssh, rc, doc, err, "run", signal.SIGTERM, before)


def test_sigkill_over_ssh_the_runner_stops_itself(ssh: Board) -> None:
    before = ssh.current()
    proc = ssh.start()
    ssh.wait_for_runner(proc)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    no_runner_within(ssh, 5)
    took = time.monotonic() - t0  # from the kill
    print(f"\nssh SIGKILL -> orphaned runner gone after {took:.2f} s")
    assert ssh.current() == before
    # The next ship clears what was left before it probes (stopped there: the local test ships in full).
    rc, doc, err = finish(ssh.start(stop_at="probe"))
    assert rc == 143, err
    assert any("its host went away" in n for n in doc["notes"]) and any("took over the board lock" in n for n in doc["notes"]), doc
    assert not list(ssh.deploy.glob("releases/*/runner.pid")) and not (ssh.deploy / LOCK_NAME).exists()

