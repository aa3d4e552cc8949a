"""The link between two real targets (this machine and an emulated SSH board on loopback) measured
by their own python, stored and reused; `plan` over a group of targets, its split and its bad input.
(Real delay and rate come from the network-namespace rig with netem; loopback has neither.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.boards.sshd import SshBoard
from toolchain.core.errors import TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.probe import probe
from toolchain.probe.link import PINGS, Endpoint, link_for, measure, worker_address
from toolchain.transports.local import LocalTransport
from toolchain.transports.ssh import SshTransport


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolchain.cli.app", *args], env=env, capture_output=True, text=True, timeout=300)


def _servers(board: SshBoard) -> str:
    """Link probe servers left on the board (its own process table)."""
    return board.run("pgrep -f 'PING_BYTES = [6]4' || true").stdout.strip()


def _home(tmp_path: Path, board: SshBoard, alias: str) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(board.ssh_config_path.read_text().replace(f"Host {board.name}", f"Host {alias}"))
    return home


def test_link_measured_stored_reused_and_torn_down(ssh_board_factory: Callable[..., SshBoard], tmp_path: Path) -> None:
    board = ssh_board_factory("rpi4-4gb")
    spec = TargetSpec(name=board.name, kind="ssh")
    with SshTransport(spec, ssh_config_path=str(board.ssh_config_path)) as worker_t, LocalTransport() as head_t:
        address = worker_address(spec, worker_t)
        assert address == "127.0.0.1"  # the address the board answered this connection on
        head = Endpoint("local", head_t, sys.executable)
        worker = Endpoint(board.name, worker_t, "python3")
        link = measure(head, worker, address)
        assert link.samples == PINGS and link.address == address and (link.head, link.worker) == ("local", board.name)
        assert 0 < link.rtt_min_s <= link.rtt_s <= link.rtt_p90_s < 0.05  # loopback through an SSH-started server: well under 50 ms
        assert link.throughput_bytes_per_s > 20e6 and link.bulk_bytes == 4 << 20
        assert _servers(board) == ""  # one client served, the server is gone
        # a head that cannot run the client: the error names both ends, and the server is stopped anyway
        with pytest.raises(TargetError, match=f"local cannot reach {board.name} at 127.0.0.1:"):
            measure(Endpoint("local", head_t, "false"), worker, address)
        assert _servers(board) == ""
        # stored and reused by the next plan of the pair; --measure-links measures again
        hf = probe(head_t, TargetSpec(name="local", kind="local"), deploy_dir=str(tmp_path / "d1"), quick=True)
        wf = probe(worker_t, spec, deploy_dir=str(tmp_path / "d2"), quick=True)
        first = link_for(head, worker, address, hf, wf)
        again = link_for(head, worker, address, hf, wf)
        fresh = link_for(head, worker, address, hf, wf, fresh=True)
        assert "stored" not in first.method and "(stored " in again.method and again.rtt_s == first.rtt_s
        assert "stored" not in fresh.method and first.head_fingerprint and first.worker_fingerprint


def test_plan_a_group_splits_what_no_board_holds(ssh_board_factory: Callable[..., SshBoard], cli_env: dict[str, str], tmp_path: Path) -> None:
    board = ssh_board_factory("rpi4-4gb")
    env = cli_env | {"HOME": str(_home(tmp_path, board, "pi"))}
    common = ["--model", "qwen2.5-1.5b-instruct", "--quant", "Q4_K_M", "--online", "--ctx", "512", "--budget", "5s"]
    # --ram gives each board 0.9 GB usable: the 1.5B model (1 GB of weights) fits neither alone, both together
    proc = _cli(env, "plan", "--target", "local", "--target", "pi", "--ram", "1GB", *common, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    split = doc["split"]
    assert split is not None and [n["target"] for n in split["nodes"]] == ["pi", "local"]
    assert [n["role"] for n in split["nodes"]] == ["worker", "head"] and split["nodes"][0]["address"] == "127.0.0.1"
    assert sum(n["layer_count"] for n in split["nodes"]) == split["n_layer"] == 28 and split["n_gpu_layers"] == 29
    assert all(n["memory_bytes"] <= n["usable_memory_bytes"] for n in split["nodes"])
    assert split["links"][0]["rtt_s"] > 0 and split["link_round_trips_per_token"] == 1
    assert doc["group_reason"].startswith("qwen2.5-1.5b-instruct Q4_K_M does not fit any one board")
    assert doc["selected"]["model"] == "qwen2.5-1.5b-instruct" and doc["target"] == "local"
    assert _servers(board) == ""
    # the human view: per node, the link and the total
    proc = _cli(env, "plan", "--target", "local", "--target", "pi", "--ram", "1GB", *common)
    assert proc.returncode == 0, proc.stderr
    assert "link local -> pi (127.0.0.1): round trip" in proc.stderr and "(stored " in proc.stderr  # the first run's link
    assert "ms/token on the link" in proc.stderr and "--tensor-split" in proc.stderr
    # with the boards' own memory the model fits one board: it stays there
    proc = _cli(env, "plan", "--target", "local", "--target", "pi", *common, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["split"] is None and "alone" in doc["group_reason"] and "stays on one board" in doc["group_reason"]


def test_plan_a_group_refuses_bad_input(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = _cli(cli_env, "plan", "--target", "local", "--target", "local")
    assert proc.returncode == 2
    assert "error: --target local names the same board as --target local" in proc.stderr and "hint: list each board" in proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    proc = _cli(cli_env | {"HOME": str(home)}, "plan", "--target", "local", "--target", f"root@127.0.0.1:{closed}")
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(lines) == 2 and f"127.0.0.1:{closed}" in lines[0] and "Traceback" not in proc.stderr
    proc = _cli(cli_env, "plan", "--target", "local", "--target", "adb:NOPE", "--json")
    assert proc.returncode in (2, 3) and json.loads(proc.stdout)["exit_code"] == proc.returncode
