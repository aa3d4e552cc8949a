"""A model split across two boards with llama.cpp's real RPC backend (tests/boards/cluster.py):
boards of this machine's kind in their own namespaces, a 0.15 ms / 1 Gbit/s link each to the lab
switch (this machine), memory cgroups that hold SmolLM2-135M F16 on two boards and not on one.
The real rpc-server on each, the real llama.cpp in the head's runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boards.cluster import Cluster
from toolchain.core.errors import BadInputError
from toolchain.deploy import rpc

MODEL = "smollm2-135m-instruct"
LIMIT = 360 << 20  # F16 needs ~494 MiB on one board at ctx 4096; split, ~300 and ~230 MiB
SHIP = ["ship", "--target", "n0", "--target", "n1", "--model", MODEL, "--quant", "F16", "--ctx", "4096", "--budget", "1s", "--json"]


@pytest.fixture(scope="module")
def f16() -> Path:
    """SmolLM2-135M F16, derived offline from the catalog's Q4_1 with llama.cpp's quantizer."""
    from toolchain.models.catalog import load_catalog
    from toolchain.models.requantize import requantize
    from toolchain.models.sources import cached_path, obtain

    dest = cached_path(MODEL, "F16")
    if not dest.exists():
        requantize(obtain(load_catalog()[MODEL], "Q4_1"), dest, "F16")
    return dest


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, dict[str, str]]]:
    from toolchain.core.paths import cache_dir

    with Cluster(2, memory_limit_bytes=LIMIT) as c:
        home = tmp_path / "home"
        c.write_ssh_config(home)
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD", "EDGEDEPLOY_SSH_COPY")}
        env |= {"HOME": str(home), "EDGEDEPLOY_CACHE": str(cache_dir()), "EDGEDEPLOY_CALIBRATE": "0",
                "EDGEDEPLOY_HOME": str(tmp_path / "edgedeploy-home")}
        yield c, env


def _ship(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolchain.cli.app", *args], env=env, capture_output=True, text=True, timeout=900)


def _servers(c: Cluster) -> list[str]:
    return [f"{b.name}: {line}" for b in c.boards for line in b.run("pgrep -a ggml-rpc || true").stdout.splitlines()]


def _open(board: object, host: str, port: int) -> bool:
    res = board.run(f"{sys.executable} -c \"import socket; socket.create_connection(('{host}', {port}), timeout=2)\"")  # type: ignore[attr-defined]
    return res.returncode == 0


def test_split_ships_runs_and_tears_down(cluster: tuple[Cluster, dict[str, str]], f16: Path) -> None:
    c, env = cluster
    head, worker = c.boards
    before = worker.link_bytes()
    proc = _ship(env, *SHIP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    split = doc["plan"]["split"]
    assert split is not None and doc["plan"]["selected"]["quant"] == "F16"
    assert doc["plan"]["group_reason"].startswith(f"{MODEL} F16 does not fit any one board")
    nodes = {n["target"]: n for n in doc["nodes"]}
    assert [n["role"] for n in doc["nodes"]] == ["worker", "head"] and set(nodes) == {"n0", "n1"}
    # both boards held layers, and llama.cpp placed every slot on the planned servers
    assert all(n["layer_count"] > 0 for n in doc["nodes"]) and sum(n["layer_count"] for n in doc["nodes"]) == split["n_layer"] == 30
    assert doc["telemetry"]["gpu_layers_offloaded"] == split["n_gpu_layers"] == 31
    # per node: measured peak memory within the board's memory, near its planned share
    for n in doc["nodes"]:
        assert 0 < n["peak_memory_bytes"] <= n["usable_memory_bytes"] < LIMIT
        assert abs(n["peak_memory_bytes"] - n["share_memory_bytes"]) / n["share_memory_bytes"] < 0.35, n
    w = nodes["n1"]
    worker_weights = next(s["weights_bytes"] for s in split["nodes"] if s["target"] == "n1")
    # llama.cpp sent the worker its tensors (the GGUF went to the head only), then hidden states
    assert worker_weights * 0.95 < w["link_rx_bytes"] < worker_weights * 1.5 and w["link_tx_bytes"] > 0
    rx, tx = (a - b for a, b in zip(worker.link_bytes(), before, strict=True))
    assert rx >= w["link_rx_bytes"] and tx >= w["link_tx_bytes"]  # the board's own counters agree (they include ssh)
    assert not list(worker.board_root.rglob("*.gguf")) and list(head.board_root.rglob("*.gguf"))
    # bound to the address the head uses (the worker's lab address; the head's own to loopback)
    assert w["endpoint"].startswith(f"{worker.address}:") and nodes["n0"]["endpoint"].startswith("127.0.0.1:")
    checks = {ch["name"]: ch for ch in doc["verdict"]["checks"]}
    assert checks["memory n0"]["passed"] and checks["memory n1"]["passed"] and checks["split placement"]["passed"]
    assert checks["link n1"]["passed"] and checks["decode budget"]["passed"]
    # torn down: no rpc-server on either board, the ports closed
    assert _servers(c) == []
    host, port = w["endpoint"].rsplit(":", 1)
    assert not _open(head, host, int(port))
    assert doc["release"]["activated"] is True
    md = (Path(doc["run_dir"]) / "report.md").read_text()
    assert "## Each board of the split" in md and f"| n1 | worker | {w['layer_count']} | {w['endpoint']} |" in md


def test_a_worker_lost_mid_run_is_infrastructure_and_nothing_is_left(cluster: tuple[Cluster, dict[str, str]], f16: Path) -> None:
    c, env = cluster
    head, worker = c.boards
    killed: list[str] = []

    def kill_worker_server() -> None:  # once the head's runner is loading the model across the boards
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            out = worker.run("pgrep ggml-rpc || true").stdout.split()
            if out and head.run("pgrep -f '[r]unner.py bench' || true").stdout.strip():
                worker.run(f"kill -9 {out[0]}")
                killed.append(out[0])
            time.sleep(0.05)

    t = threading.Thread(target=kill_worker_server, daemon=True)
    t.start()
    proc = _ship(env, *SHIP)
    killed.append("done")
    t.join(timeout=10)
    assert proc.returncode == 3, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["failure_class"] == "infrastructure" and "Traceback" not in proc.stderr
    assert "rpc-server on n1 stopped during the run" in doc["error"], doc["error"]
    assert _servers(c) == []  # the head's own server was stopped too


def test_rpc_server_is_never_bound_to_every_interface() -> None:
    from toolchain.transports.local import LocalTransport

    with LocalTransport() as t, pytest.raises(BadInputError, match="every interface"):
        rpc.start_server("local", t, sys.executable, "/nonexistent", "0.0.0.0", 1, "/nonexistent")


def test_a_lab_group_splits_the_model_across_its_boards(cluster: tuple[Cluster, dict[str, str]], f16: Path, tmp_path: Path) -> None:
    c, env = cluster
    lab = tmp_path / "lab.yaml"
    lab.write_text("name: split\nretries: {attempts: 1}\nboards:\n"
                   f"  n0: {{target: n0, workers: [n1], model: {MODEL}, quant: F16, ctx: 4096, budget: 1s}}\n  n1: {{target: n1}}\n")
    proc = _ship(env, "lab", "run", str(lab))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = Path(env["EDGEDEPLOY_HOME"]) / "runs"
    (lab_doc,) = [json.loads(p.read_text()) for p in runs.glob("*-lab-split/report.json")]
    assert [b["name"] for b in lab_doc["boards"]] == ["n0"] and lab_doc["boards"][0]["status"] == "passed"  # n1 runs only in the group
    board = json.loads((Path(lab_doc["boards"][0]["run_dir"]) / "report.json").read_text())
    assert [n["target"] for n in board["nodes"]] == ["n1", "n0"] and all(n["layer_count"] > 0 for n in board["nodes"])
    assert _servers(c) == []
