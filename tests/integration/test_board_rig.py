"""The emulated board rig (tests/boards/), checked through the real OpenSSH client."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.boards import sshd as sshd_module
from tests.boards.overlay import BOARDS_DIR, namespace_argv
from tests.boards.sshd import BoardStartError, SshBoard

ALL_BOARDS = sorted(d.name for d in BOARDS_DIR.iterdir() if (d / "board.yaml").is_file())


def ssh(board: SshBoard, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The ssh command line a user would type, built from the board's public attributes."""
    argv = [
        "ssh",
        "-F",
        "none",
        "-o",
        "BatchMode=yes",
        "-i",
        str(board.key_path),
        "-p",
        str(board.port),
        "-o",
        f"UserKnownHostsFile={board.known_hosts_path}",
        "-o",
        "StrictHostKeyChecking=yes",
        f"{board.user}@{board.host}",
        command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def ok(board: SshBoard, command: str) -> str:
    result = ssh(board, command)
    assert result.returncode == 0, f"{command!r} on {board.name}: rc {result.returncode}\n{result.stderr}"
    return result.stdout


def test_rpi4_identity_over_ssh(rpi4_board: SshBoard) -> None:
    out = ok(rpi4_board, "cat /proc/device-tree/model; echo; uname -m; nproc; grep MemTotal /proc/meminfo; hostname")
    model, machine, cores, memtotal, hostname = out.splitlines()
    assert model == "Raspberry Pi 4 Model B Rev 1.5\0"  # DT strings keep their NUL
    assert machine == "aarch64"
    assert cores == "4"
    assert 3.5 < int(memtotal.split()[1]) / 2**20 < 4.0  # GiB
    assert hostname == "sl02"
    assert rpi4_board.target == f"{rpi4_board.user}@127.0.0.1:{rpi4_board.port}"


def test_rpi4_cpuinfo_and_devicetree(rpi4_board: SshBoard) -> None:
    out = ok(rpi4_board, "cat /proc/cpuinfo; cat /sys/firmware/devicetree/base/compatible | tr '\\0' '\\n'")
    assert out.count("CPU part        : 0xd08") == 4  # Cortex-A72
    assert "Model           : Raspberry Pi 4 Model B Rev 1.5" in out
    assert "brcm,bcm2711" in out.splitlines()
    assert "AuthenticAMD" not in out and "GenuineIntel" not in out


def test_vcgencmd_on_the_pi(rpi4_board: SshBoard) -> None:
    assert ok(rpi4_board, "vcgencmd measure_temp").strip() == "temp=45.2'C"
    assert ok(rpi4_board, "vcgencmd get_throttled").strip() == "throttled=0x0"
    assert ok(rpi4_board, "vcgencmd get_config total_mem").strip() == "total_mem=4096"
    pmic = ssh(rpi4_board, "vcgencmd pmic_read_adc")  # Pi 5 only: Pi 4 firmware does not know it
    assert pmic.returncode == 254
    assert 'error=1 error_msg="Command not registered"' in pmic.stdout


def test_orangepi5_big_little(ssh_board_factory: Callable[..., SshBoard]) -> None:
    board = ssh_board_factory("orangepi5")
    out = ok(
        board,
        "grep -c ^processor /proc/cpuinfo; nproc; lscpu | grep 'Model name';"
        " cat /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
        " /sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq",
    )
    lines = out.splitlines()
    assert lines[:2] == ["8", "8"]
    assert [line.split()[-1] for line in lines[2:4]] == ["Cortex-A55", "Cortex-A76"]
    assert lines[4:] == ["1800000", "2400000"]


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_every_board_reports_its_board_yaml(name: str, ssh_board_factory: Callable[..., SshBoard]) -> None:
    spec = yaml.safe_load((BOARDS_DIR / name / "board.yaml").read_text())
    board = ssh_board_factory(name)
    out = ok(
        board,
        "uname -m; uname -r; nproc; getconf _NPROCESSORS_ONLN; arch;"
        " grep -c ^processor /proc/cpuinfo; sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo",
    )
    machine, release, nproc, onln, arch, processors, memtotal = out.split()
    assert (machine, arch, release) == (spec["arch"], spec["arch"], spec["kernel_release"])
    assert int(nproc) == int(onln) == int(processors) == spec["cores"]
    assert int(memtotal) * 1024 == spec["mem_total_bytes"]
    for path in spec["files"]:  # every declared overlay file is really there
        if path.startswith("/") and "cpuN" not in path:
            assert (BOARDS_DIR / name / "root" / path.lstrip("/")).exists() or os.path.islink(BOARDS_DIR / name / "root" / path.lstrip("/")), path


def test_board_specific_tools(ssh_board_factory: Callable[..., SshBoard]) -> None:
    jetson = ssh_board_factory("jetson-orin-nano")
    smi = ok(jetson, "nvidia-smi")
    assert "Orin (nvgpu)" in smi and "Not Supported" in smi
    stats = ok(jetson, "timeout 0.5 tegrastats --interval 100; true")
    assert "RAM 6982/7620MB" in stats.splitlines()[0]
    old = ssh_board_factory("old-kernel")
    meminfo = ok(old, "cat /proc/meminfo")
    assert "MemTotal:" in meminfo and "MemAvailable" not in meminfo
    assert ok(old, "uname -m; getconf LONG_BIT").split() == ["armv7l", "32"]
    assert ssh(old, "cat /proc/device-tree/model").returncode != 0


def test_phone_overlay_without_ssh() -> None:
    """The adb rig runs shell commands through namespace_argv; no PID namespace is needed."""
    argv = namespace_argv(BOARDS_DIR / "pixel8", ["sh", "-c", "getprop ro.product.model; uname -m; nproc; getprop"])
    assert "--pid" not in argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert out[:3] == ["Pixel 8", "aarch64", "9"]
    assert "[ro.soc.model]: [Tensor G3]" in out


def test_this_machine_is_unaffected(rpi4_board: SshBoard) -> None:
    assert "0xd08" in ok(rpi4_board, "cat /proc/cpuinfo")
    assert "0xd08" not in Path("/proc/cpuinfo").read_text()
    assert not os.path.lexists("/proc/device-tree")
    assert platform.machine() != "aarch64"
    assert subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() == platform.machine()


def test_ssh_config_alias_and_host_key(rpi4_board: SshBoard) -> None:
    alias = subprocess.run(
        ["ssh", "-F", str(rpi4_board.ssh_config_path), "-o", "BatchMode=yes", rpi4_board.name, "uname -m"], capture_output=True, text=True, timeout=30
    )
    assert alias.stdout.strip() == "aarch64", alias.stderr
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(rpi4_board.known_hosts_path)], capture_output=True, text=True, check=True).stdout
    assert rpi4_board.host_key_fingerprint.startswith("SHA256:")
    assert rpi4_board.host_key_fingerprint in listed and f"[127.0.0.1]:{rpi4_board.port}" in listed


def test_kill_connections_drops_sessions_not_the_board(ssh_board_factory: Callable[..., SshBoard]) -> None:
    board = ssh_board_factory("rpi4-4gb")
    ok(board, "nohup sleep 271 >/dev/null 2>&1 &")
    session = subprocess.Popen(board.ssh_argv("sleep 30"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while "sleep 30" not in ok(board, "ps -eo args") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert board.kill_connections() >= 1  # the session's sshd
    assert session.wait(timeout=10) == 255  # ssh's "connection lost"
    assert "sleep 271" in ok(board, "ps -eo args")  # the board itself is still up


def test_stop_kills_everything_started_on_the_board() -> None:
    board = SshBoard("rpi4-4gb").start()
    ok(board, "nohup sleep 314 >/dev/null 2>&1 &")
    board.stop()
    leftovers = subprocess.run(["pgrep", "-f", "sleep 314"], capture_output=True, text=True).stdout
    assert leftovers == ""
    assert not board.workdir.exists()


def test_memory_limit(ssh_board_factory: Callable[..., SshBoard]) -> None:
    board = ssh_board_factory("rpi4-4gb", memory_limit_bytes=192 << 20)
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    possible = (v2.exists() and "memory" in v2.read_text().split()) or Path("/sys/fs/cgroup/memory").is_dir()
    assert board.memory_limit_applied == possible
    if board.memory_limit_applied:
        assert board.memory_cgroup is not None
        assert board.memory_cgroup.name in ok(board, "cat /proc/self/cgroup")
        hog = ssh(board, "python3 -c 'b = bytearray(400 << 20); b[::4096] = b\"x\" * len(b[::4096])'")
        assert hog.returncode != 0  # OOM-killed inside the board's cgroup


def test_start_is_fast_and_reports_sshd_errors() -> None:
    t = time.monotonic()
    with SshBoard("old-kernel") as board:
        assert time.monotonic() - t < 2.0  # ~0.1 s when the machine is idle
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            with pytest.raises(BoardStartError, match="Address already in use"):
                SshBoard("old-kernel", port=port).start()
        assert ok(board, "true") == ""


def test_missing_sshd_says_to_run_the_setup_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshd_module, "SSHD", Path("/nonexistent/sshd"))
    with pytest.raises(BoardStartError, match=r"scripts/setup\.sh"):
        SshBoard("rpi4-4gb").start()
