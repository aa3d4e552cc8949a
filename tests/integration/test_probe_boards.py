"""The whole probe over SSH, adb and a serial console against the emulated boards (tests/boards):
the facts must be the board's, not this machine's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.boards.adb_fixtures import RunningDevice
from tests.boards.serial_console import SerialConsole
from tests.boards.sshd import SshBoard
from tests.unit.test_probe_support import check_fixture, fixture_files
from toolchain.core.nouns import HostFacts, TargetSpec
from toolchain.probe import probe
from toolchain.transports.adb import AdbTransport
from toolchain.transports.serial import SerialTransport
from toolchain.transports.ssh import SshTransport

BOARDS = Path(__file__).resolve().parents[1] / "boards"
HOST_MEMTOTAL = re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M)
GiB = 1 << 30


def board_yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((BOARDS / name / "board.yaml").read_text())
    assert isinstance(data, dict)
    return data


def ssh_probe(board: SshBoard, deploy_dir: Path, *, quick: bool = True, record: Path | None = None) -> HostFacts:
    spec = TargetSpec(name=board.name, kind="ssh")
    with SshTransport(spec, ssh_config_path=str(board.ssh_config_path)) as t:
        return probe(t, spec, deploy_dir=str(deploy_dir), quick=quick, record=record)


def assert_is_board(f: HostFacts, name: str) -> None:
    b = board_yaml(name)
    assert f.cpu.cores == b["cores"] and f.os.arch == b["arch"] and f.os.kernel == b["kernel_release"]
    assert f.memory.total_bytes == b["mem_total_bytes"]
    assert HOST_MEMTOTAL and f.memory.total_bytes != int(HOST_MEMTOTAL.group(1)) * 1024  # not this machine's
    assert 0 < f.memory.available_bytes <= f.memory.total_bytes and 0 < f.memory.usable_bytes < f.memory.total_bytes
    if f.os.kind != "android":  # on Android lmkd frees cached apps: usable may exceed MemAvailable
        assert f.memory.usable_bytes < f.memory.available_bytes
    assert f.probe_s > 0 and f.round_trips == 1 and f.quick


@pytest.mark.parametrize("name", ["rpi4-32bit", "orangepi5", "jetson-orin-nano", "old-kernel"])
def test_ssh_probe_reports_the_board(name: str, ssh_board_factory: Callable[..., SshBoard], tmp_path: Path) -> None:
    f = ssh_probe(ssh_board_factory(name), tmp_path / "deploy")
    assert_is_board(f, name)
    if name == "rpi4-32bit":
        assert f.os.arch_note and "64-bit hardware" in f.os.arch_note and f.cpu.hardware_64bit
    elif name == "orangepi5":
        assert f.board.model == "Orange Pi 5" and f.cpu.recommended_threads == 4 and f.cpu.decode_cpu_ids == [4, 5, 6, 7]
    elif name == "jetson-orin-nano":
        (gpu,) = f.accelerators
        assert gpu.name == "Orin (nvgpu)" and gpu.shared_memory and gpu.memory_bytes is None and gpu.llama_cpp_backend == "cuda"
        assert f.thermal.power_w.get("VDD_IN") == 17.946
    elif name == "old-kernel":
        assert "lacks MemAvailable" in f.memory.available_source


def test_ssh_probe_pi4_quick(rpi4_board: SshBoard, tmp_path: Path) -> None:
    f = ssh_probe(rpi4_board, tmp_path / "deploy")
    assert_is_board(f, "rpi4-4gb")
    assert f.board.model == "Raspberry Pi 4 Model B Rev 1.5" and f.board.nominal_ram_bytes == 4 * GiB
    assert f.cpu.clusters[0].name == "Cortex-A72" and f.thermal.throttled == "0x0"
    assert f.runtime.python and f.storage.free_bytes


def test_ssh_full_probe_measures(rpi4_board: SshBoard, tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    f = ssh_probe(rpi4_board, deploy, quick=False)
    assert not f.quick and f.round_trips == 2
    assert f.bandwidth.read_bytes_per_s and f.bandwidth.read_bytes_per_s > 1e8 and f.bandwidth.threads == 4  # the Pi's 4 big cores
    assert f.bandwidth.read_1t_bytes_per_s and "memchr" in f.bandwidth.method
    assert f.storage.read_bytes_per_s and f.storage.read_bytes_per_s > 1e6 and "temporary" in f.storage.read_method
    assert not list(tmp_path.rglob(".edgedeploy-read-test"))  # the read test cleaned up


def test_ssh_probe_sees_the_cgroup_limit(ssh_board_factory: Callable[..., SshBoard], tmp_path: Path) -> None:
    limit = int(1.5 * GiB)
    board = ssh_board_factory("rpi4-4gb", memory_limit_bytes=limit)
    assert board.memory_limit_applied, "this machine offers no writable memory cgroup (run the tests as root)"
    f = ssh_probe(board, tmp_path / "deploy")
    assert f.memory.cgroup_limit_bytes == limit
    assert f.memory.usable_bytes < limit and "cgroup" in f.memory.reserve_reason.split("(tighter")[0]


def test_adb_probe_reports_the_phone(adb_device: RunningDevice) -> None:
    spec = TargetSpec(name="pixel8", kind="adb", adb_serial=adb_device.serial)
    with AdbTransport(spec, server_port=adb_device.server_port) as t:
        f = probe(t, spec, deploy_dir="/data/local/tmp/edgedeploy", quick=True)
    assert_is_board(f, "pixel8")
    assert (f.os.kind, f.os.libc, f.board.android_model, f.board.soc) == ("android", "bionic", "Pixel 8", "Google Tensor G3")
    assert f.cpu.recommended_threads == 5 and f.memory.reserve_reason.startswith("usable = Android")


def test_serial_probe_reports_the_pi() -> None:
    with SerialConsole(board_dir=BOARDS / "rpi4-4gb") as console:
        spec = TargetSpec(name="pi-serial", kind="serial", device=str(console.device), baud=115200)
        with SerialTransport(spec, login_user="pi", login_password="raspberry") as t:
            f = probe(t, spec, deploy_dir="/tmp/edgedeploy-serial", quick=True)
    assert_is_board(f, "rpi4-4gb")
    assert f.board.model == "Raspberry Pi 4 Model B Rev 1.5"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolchain.cli.app", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_probe_over_ssh(rpi4_board: SshBoard, cli_env: dict[str, str], tmp_path: Path) -> None:
    """`edgedeploy probe` over SSH on the emulated Pi 4 reports the Pi's model, RAM and cores."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(rpi4_board.ssh_config_path.read_text().replace(f"Host {rpi4_board.name}", "Host emulated-pi"))
    env = cli_env | {"HOME": str(home)}
    proc = _cli(env, "probe", "emulated-pi", "--quick", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    b = board_yaml("rpi4-4gb")
    assert doc["target"] == "emulated-pi" and doc["board"]["model"] == "Raspberry Pi 4 Model B Rev 1.5"
    assert doc["os"]["kind"] == "linux" and doc["os"]["kernel"] == b["kernel_release"] and doc["cpu"]["arch"] == "aarch64"
    assert doc["cpu"]["cores"] == 4 and "asimd" in doc["cpu"]["features"]
    assert doc["memory"]["total_bytes"] == b["mem_total_bytes"]
    assert 0 < doc["memory"]["usable_bytes"] < doc["memory"]["available_bytes"]
    assert doc["storage"]["free_bytes"] > 0 and "read_bytes_per_s" in doc["storage"]
    assert doc["accelerators"] == [] and doc["runtime"]["python"] and "llama_cpp" in doc["runtime"]
    # human output: the table and the one-line summary go to stderr; --record writes fixtures
    record = tmp_path / "rec"
    proc = _cli(env, "probe", "emulated-pi", "--quick", "--record", str(record))
    assert proc.returncode == 0, proc.stderr
    summary = next(line for line in proc.stderr.splitlines() if line.startswith("summary: "))
    assert "Raspberry Pi 4 Model B Rev 1.5" in summary and "4xCortex-A72" in summary
    recorded = fixture_files(record)
    assert {p.parent.name for p in recorded} >= {"cpuinfo", "meminfo", "uname", "storage"}
    for path in recorded:
        check_fixture(path)
    assert "10000000f8b73778" not in (record / "cpuinfo" / "raspberry-pi-4-model-b-rev-1-5.yaml").read_text()
    assert os.environ.get("HOME") != str(home)
