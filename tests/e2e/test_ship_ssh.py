"""Shipping over real SSH to an emulated board that is this machine (tests/shipkit.host_board_dir).

Resumable verified uploads (dropped connection, killed process), the content-addressed store,
release switching, rollback and pruning, and the full ship pipeline: a memory cgroup that
OOM-kills an oversized release leaves the previous one current; serve mode leaves a server that
answers a completion over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.boards.sshd import SshBoard
from tests.shipkit import bundle_for, host_board_dir, ship_request, smollm2_plan, ssh_spec
from toolchain.core.errors import TargetError
from toolchain.core.nouns import Budget
from toolchain.core.serde import to_json_dict
from toolchain.deploy.pipeline import DeployOptions, DeployRequest
from toolchain.deploy.releases import Shipper
from toolchain.deploy.serve import ServeOptions, Server
from toolchain.deploy.status import deployment_status
from toolchain.models.gguf_reader import sha256_file
from toolchain.plan.request import PlanRequest
from toolchain.transports.ssh import SshTransport

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def board(ssh_board_factory: Callable[..., SshBoard], tmp_path: Path) -> SshBoard:
    return ssh_board_factory(host_board_dir(tmp_path))


@pytest.fixture
def transport(board: SshBoard) -> Iterator[SshTransport]:
    t = SshTransport(ssh_spec(board), ssh_config_path=str(board.ssh_config_path))
    yield t
    t.close()


def connect_to(board: SshBoard) -> Callable[..., SshTransport]:
    return lambda spec, accept_new_host_key=False: SshTransport(spec, ssh_config_path=str(board.ssh_config_path))


def ship_plan(board: SshBoard, tmp_path: Path, gguf: Path, deploy: Path, *, name: str = "plan.json", budget_ms: float = 1000.0,
              options: DeployOptions | None = None, force: bool = False, python: str = sys.executable, **plan_kw: Any) -> Any:
    plan_file = tmp_path / name
    plan_file.write_text(json.dumps(to_json_dict(smollm2_plan(gguf, budget_ms=budget_ms, **plan_kw))))
    req = PlanRequest(budget=Budget(budget_ms), budget_given=False, plan_file=plan_file)
    return ship_request(DeployRequest(ssh_spec(board, python=python), req, deploy_dir=str(deploy), quick_probe=True, force=force,
                                      options=options or DeployOptions()))


# --- transfer -------------------------------------------------------------------------------


def test_upload_dropped_at_half_resumes_and_verifies(board: SshBoard, transport: SshTransport, smollm2_gguf: Path, tmp_path: Path) -> None:
    sha = sha256_file(smollm2_gguf)
    size = smollm2_gguf.stat().st_size
    shipper = Shipper(transport, str(tmp_path / "deploy"), python=sys.executable)
    shipper.prepare()

    def drop_at_half(done: int, total: int) -> None:
        if done >= total // 2:
            board.kill_connections()  # the network drops; the board stays up

    with pytest.raises(TargetError, match="upload stopped at"):
        shipper.upload_model(smollm2_gguf, sha, progress=drop_at_half)
    partial = tmp_path / "deploy" / "models" / f"{sha}.gguf.partial"
    stopped_at = partial.stat().st_size
    assert 0 < stopped_at < size

    logs: list[str] = []
    again = Shipper(SshTransport(ssh_spec(board), ssh_config_path=str(board.ssh_config_path)), shipper.root, python=sys.executable, log=logs.append)
    path, sent, present = again.upload_model(smollm2_gguf, sha)
    assert not present and sent == size - stopped_at  # only the rest went over the wire
    assert any("resuming upload at" in m for m in logs)
    assert sha256_file(Path(path)) == sha and not partial.exists()


def test_upload_of_a_killed_process_resumes(board: SshBoard, smollm2_gguf: Path, tmp_path: Path) -> None:
    """The host process and its ssh child are SIGKILLed at about half."""
    deploy = tmp_path / "deploy"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from tests.shipkit import ssh_spec
        from toolchain.deploy.releases import Shipper
        from toolchain.transports.ssh import SshTransport
        class B: name = {board.name!r}
        t = SshTransport(ssh_spec(B()), ssh_config_path={str(board.ssh_config_path)!r})
        s = Shipper(t, {str(deploy)!r}, python=sys.executable)
        s.prepare()
        def die(done, total):
            if done >= total // 2:  # the copy's ssh child runs in its own session: kill it too
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        if open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid()):
                            os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
                os.kill(os.getpid(), signal.SIGKILL)
        s.upload_model(Path({str(smollm2_gguf)!r}), {sha256_file(smollm2_gguf)!r}, progress=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], start_new_session=True, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sha = sha256_file(smollm2_gguf)
    partial = deploy / "models" / f"{sha}.gguf.partial"
    assert 0 < partial.stat().st_size < smollm2_gguf.stat().st_size
    t = SshTransport(ssh_spec(board), ssh_config_path=str(board.ssh_config_path))
    _, sent, _ = Shipper(t, str(deploy), python=sys.executable).upload_model(smollm2_gguf, sha)
    assert sent < smollm2_gguf.stat().st_size
    assert sha256_file(deploy / "models" / f"{sha}.gguf") == sha


def test_a_corrupted_partial_is_caught_by_the_sha256(transport: SshTransport, smollm2_gguf: Path, tmp_path: Path) -> None:
    sha = sha256_file(smollm2_gguf)
    shipper = Shipper(transport, str(tmp_path / "deploy"), python=sys.executable)
    shipper.prepare()
    (tmp_path / "deploy" / "models" / f"{sha}.gguf.partial").write_bytes(b"\xff" * 4096)  # garbage "resumed" from
    with pytest.raises(TargetError, match="sha256"):
        shipper.upload_model(smollm2_gguf, sha)
    assert not (tmp_path / "deploy" / "models" / f"{sha}.gguf").exists()
    _, sent, _ = shipper.upload_model(smollm2_gguf, sha)  # the bad partial was removed: a clean retry works
    assert sent == smollm2_gguf.stat().st_size


def test_store_releases_rollback_and_prune(transport: SshTransport, smollm2_gguf: Path, tmp_path: Path) -> None:
    root = tmp_path / "deploy"
    shipper = Shipper(transport, str(root), python=sys.executable)
    shipper.prepare()
    sha = sha256_file(smollm2_gguf)
    ids = []
    for i in range(4):
        _, sent, present = shipper.upload_model(smollm2_gguf, sha)
        assert (sent, present) == ((smollm2_gguf.stat().st_size, False) if i == 0 else (0, True))
        bundle = bundle_for(smollm2_gguf, tmp_path / f"b{i}")
        bundle = replace(bundle, release_id=f"{bundle.release_id[:-9]}-{i}-{sha[:8]}")
        rel = shipper.install_release(bundle)
        shipper.activate(rel.id)
        ids.append(rel.id)
        assert os.readlink(root / "current") == f"releases/{rel.id}"
    assert shipper.rollback() == ids[2] and shipper.current() == ids[2]
    orphan = root / "models" / ("0" * 64 + ".gguf")
    orphan.write_bytes(b"x")  # referenced by no release
    assert shipper.prune(keep=2) == ids[:2]
    assert set(shipper.releases()) == {ids[2], ids[3]} and shipper.current() == ids[2]
    assert not orphan.exists() and (root / "models" / f"{sha}.gguf").exists()
    status = deployment_status(transport, str(root), sys.executable)
    assert status["current"] == ids[2] and status["previous"] == [ids[3]] and status["quant"] == "Q4_1"


# --- the pipeline over SSH --------------------------------------------------------------------


def set_memory_limit(board: SshBoard, limit: int) -> None:
    """Tighten the board's memory cgroup (v1 or v2) while it runs."""
    group = board.memory_cgroup
    assert group is not None
    if (group / "memory.max").exists():
        (group / "memory.max").write_text(str(limit))
        return
    (group / "memory.limit_in_bytes").write_text(str(limit))
    if (group / "memory.memsw.limit_in_bytes").exists():
        (group / "memory.memsw.limit_in_bytes").write_text(str(limit))


def test_ship_twice_then_oom_keeps_the_previous_release(
    ssh_board_factory: Callable[..., SshBoard], smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = ssh_board_factory(host_board_dir(tmp_path), memory_limit_bytes=2560 << 20)
    if not board.memory_limit_applied:
        pytest.fail("no writable memory cgroup here (needs cgroup v1 memory or v2 with the memory controller, as root)")
    monkeypatch.setattr("toolchain.transports.factory.connect", connect_to(board))
    deploy = tmp_path / "deploy"
    first = ship_plan(board, tmp_path, smollm2_gguf, deploy, ctx=256)
    assert first.exit_code == 0, first.report.get("error")
    rel = first.report["release"]
    assert rel["activated"] and not rel["model_already_present"] and rel["model_bytes_sent"] == smollm2_gguf.stat().st_size
    second = ship_plan(board, tmp_path, smollm2_gguf, deploy, ctx=256)
    assert second.exit_code == 0 and second.report["release"]["model_bytes_sent"] == 0
    assert second.report["release"]["model_already_present"]
    current = os.readlink(deploy / "current")

    # A 32k context (~750 MB of KV cache) plus ~650 MB of compute buffers fits the board as planned and dry-loaded (2.5 GB); then
    # something else takes memory (the cgroup shrinks to 450 MB) before the bench runs.
    from toolchain.deploy import run as run_stage

    real_run_bench = run_stage.run_bench

    def squeezed(*args: Any, **kw: Any) -> Any:
        set_memory_limit(board, 450 << 20)
        return real_run_bench(*args, **kw)

    monkeypatch.setattr(run_stage, "run_bench", squeezed)
    oom = ship_plan(board, tmp_path, smollm2_gguf, deploy, name="big.json", ctx=32768)
    assert oom.exit_code == 5, oom.report
    assert oom.report["failure_kind"] == "oom" and "out of memory" in oom.report["error"]
    assert "peak RSS" in oom.report["error"]
    assert os.readlink(deploy / "current") == current
    assert "NOT activated" in (oom.run_dir / "report.md").read_text()


def test_serve_mode_answers_a_completion_over_http(board: SshBoard, smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp.server.app  # noqa: F401  (the [server] extra is a dependency: fail, never skip)

    monkeypatch.setattr("toolchain.transports.factory.connect", connect_to(board))
    port = free_port()
    deploy = tmp_path / "deploy"
    res = ship_plan(board, tmp_path, smollm2_gguf, deploy, ctx=512,
                    options=DeployOptions(mode="serve", serve=ServeOptions(port=port)))
    assert res.exit_code == 0, (res.report.get("error"), res.report.get("log_tail"))
    serve = res.report["serve"]
    assert serve["ok"] and serve["manager"] == "supervisor" and serve["pid"]
    # from this machine, over HTTP, to the board
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        doc = json.load(r)
    assert doc["choices"][0]["text"].strip()

    t = SshTransport(ssh_spec(board), ssh_config_path=str(board.ssh_config_path))
    st = deployment_status(t, str(deploy), sys.executable)
    assert st["serve"]["answering"], st["serve"]
    assert st["serve"]["release"] == st["current"] == res.report["release"]["id"]
    # the supervisor restarts a crashed server
    old = st["serve"]["pid"]
    t.run(["kill", "-9", str(old)])  # a pid in the board's PID namespace: killed there
    server = Server(t, str(deploy), sys.executable)
    health = server.check(ServeOptions(port=port, ready_timeout_s=120), "supervisor")
    assert health["ok"], (health, server.log_tail("supervisor"))
    assert server.pid("supervisor") not in (None, old), server.log_tail("supervisor")
    server.stop()
    assert deployment_status(t, str(deploy), sys.executable)["serve"] is None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_telemetry_on_an_emulated_pi_reads_its_sensors(rpi4_board: SshBoard, smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Pi 4 overlay's thermal zone and vcgencmd reach the runner's telemetry (sustained mode, 1 s)."""
    monkeypatch.setattr("toolchain.transports.factory.connect", connect_to(rpi4_board))
    res = ship_plan(rpi4_board, tmp_path, smollm2_gguf, tmp_path / "deploy", ctx=256, options=DeployOptions(sustained_s=1.0))
    assert res.exit_code == 0, res.report.get("error")
    tel = res.report["telemetry"]
    assert tel["temperature_before_c"] == pytest.approx(45.277) and tel["temperature_after_c"] == pytest.approx(45.277)
    assert tel["extra"]["throttled_before"] == 0 and tel["extra"]["throttled_during"] == 0
    assert tel["extra"]["sustained_s"] == 1.0 and tel["extra"]["rounds"] >= 1
    assert tel["extra"]["power_source"] is None  # a Pi 4 has no power sensor (pmic_read_adc is Pi 5 only)


def test_energy_per_token_from_tegrastats_on_an_emulated_jetson(
    ssh_board_factory: Callable[..., SshBoard], smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Jetson overlay's tegrastats prints the captured VDD_IN 17946mW: energy/token = that x time/token."""
    board = ssh_board_factory("jetson-orin-nano")
    monkeypatch.setattr("toolchain.transports.factory.connect", connect_to(board))
    res = ship_plan(board, tmp_path, smollm2_gguf, tmp_path / "deploy", ctx=256, options=DeployOptions(sustained_s=2.0))
    assert res.exit_code == 0, res.report.get("error")
    extra = res.report["telemetry"]["extra"]
    assert extra["power_source"] == "tegrastats" and extra["power_error"] is None
    per_token_s = sum(extra["latencies_ms"]) / 1000.0 / len(extra["latencies_ms"])
    assert extra["energy_j_per_token"] == pytest.approx(17.946 * per_token_s, rel=0.25)
