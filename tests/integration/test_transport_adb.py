"""AdbTransport against the emulated Pixel 8, through Debian's real adb client and server."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.boards.adb_fixtures import AdbServer, RunningDevice
from toolchain.core.errors import CommandFailed, CommandTimeout, TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.transports.adb import AdbTransport

# Fixtures (adb_server, adb_device, start_adb_device) come from tests/boards/adb_fixtures.py
# through tests/conftest.py.
StartDevice = Callable[..., RunningDevice]
# The three shells a phone may offer: shell_v2 (Android 7+), and pre-v2 (merged output, no exit
# status) either raw or on a PTY that turns LF into CRLF (what Android < 7 really does).
SHELLS = [
    pytest.param({"shell_v2": True}, id="shell_v2"),
    pytest.param({"shell_v2": False}, id="old-raw"),
    pytest.param({"shell_v2": False, "legacy_pty": True}, id="old-pty"),
]
WEIRD = "a b  'single' \"double\" $(echo no) `echo no` $HOME ${X:-y} \\n \\ ; | & * ? ~ # é\nsecond line\n\ttab\n"


def connect(serial: str | None, server_port: int) -> AdbTransport:
    name = f"adb:{serial}" if serial else "adb"
    return AdbTransport(TargetSpec(name=name, kind="adb", adb_serial=serial), server_port=server_port)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


# --- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_exit_codes_and_streams(start_adb_device: StartDevice, shell: dict[str, bool]) -> None:
    dev = start_adb_device(**shell)
    shell_v2 = shell["shell_v2"]
    t = connect(dev.serial, dev.server_port)
    with t:
        assert t.shell_v2 is shell_v2
        assert t.capabilities.separate_stderr is shell_v2
        for code in (0, 3, 42):
            r = t.run_shell(f"echo out; echo err >&2; exit {code}", check=False)
            assert r.exit_status == code
            if shell_v2:
                assert (r.stdout, r.stderr) == ("out\n", "err\n")
            else:  # one merged stream
                assert sorted(r.stdout.splitlines()) == ["err", "out"] and r.stderr == ""
        with pytest.raises(CommandFailed) as failed:
            t.run(["sh", "-c", "echo boom >&2; exit 3"])
        assert failed.value.exit_status == 3 and "boom" in failed.value.output_tail
        # No trailing newline, and output that looks like a marker, are kept as they are.
        assert t.run(["printf", "%s", "x:0"]).stdout == "x:0"


@pytest.mark.parametrize("shell", SHELLS)
def test_argv_arrives_unchanged(start_adb_device: StartDevice, shell: dict[str, bool]) -> None:
    dev = start_adb_device(**shell)
    with connect(dev.serial, dev.server_port) as t:
        assert t.run(["printf", "%s", WEIRD]).stdout == WEIRD
        assert t.run(["printf", "%s|", "", " ", "-n", "--"]).stdout == "| |-n|--|"
        # Long command lines go through a pushed script file instead of adb's service string.
        long_arg = "x" * 20000 + "'\"$(no)"
        assert t.run(["printf", "%s", long_arg]).stdout == long_arg


@pytest.mark.parametrize("shell", SHELLS)
def test_stdin_and_scripts(start_adb_device: StartDevice, shell: dict[str, bool]) -> None:
    dev = start_adb_device(**shell)
    with connect(dev.serial, dev.server_port) as t:
        data = b"line 1\nline 2 'quoted' $(x)\n\x00\xffbinary"
        r = t.run(["sha256sum"], stdin=data)
        assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
        r = t.run_script('set -e\nx="a b"\necho "$x"\necho err >&2\nexit 7\n', check=False)
        assert r.exit_status == 7 and "a b" in r.stdout
        assert t.run_script("echo ok\n").stdout == "ok\n"
        # Staged files are cleaned up.
        assert not [p.name for p in dev.data_dir.iterdir() if p.name.startswith(".edgedeploy")]


def test_timeout_raises(adb_device: RunningDevice) -> None:
    with connect(adb_device.serial, adb_device.server_port) as t:
        with pytest.raises(CommandTimeout):
            t.run(["sleep", "30"], timeout=1.5)
        assert t.run(["echo", "still usable"]).stdout == "still usable\n"


def test_endless_output_is_refused(adb_device: RunningDevice) -> None:
    with connect(adb_device.serial, adb_device.server_port) as t:
        with pytest.raises(TargetError, match="printed more than 16 MiB"):
            t.run(["sh", "-c", "exec yes edgedeploy"], timeout=120)
        assert t.run(["echo", "still usable"]).stdout == "still usable\n"


def test_probe_commands_see_the_phone(adb_device: RunningDevice) -> None:
    board = adb_device.board
    phone_total = re.search(r"^MemTotal:.*$", (board / "root/proc/meminfo").read_text(), re.MULTILINE)
    host_total = re.search(r"^MemTotal:.*$", Path("/proc/meminfo").read_text(), re.MULTILINE)
    assert phone_total and host_total and phone_total.group() != host_total.group()
    with connect(adb_device.serial, adb_device.server_port) as t:
        assert t.run(["getprop", "ro.product.model"]).stdout.strip() == "Pixel 8"
        meminfo = t.run(["cat", "/proc/meminfo"]).stdout
        assert meminfo.splitlines()[0] == phone_total.group()
        assert t.run(["cat", "/proc/cpuinfo"]).stdout == (board / "root/proc/cpuinfo").read_text()
        df = t.run(["df", "-k", "/data/local/tmp"]).stdout
        assert len(df.splitlines()) >= 2
        assert t.home() == "/data/local/tmp"
        script = t.run_script("getprop ro.product.model\ngrep MemTotal /proc/meminfo\n").stdout
        assert script.splitlines() == ["Pixel 8", phone_total.group()]


# --- files ------------------------------------------------------------------------------------


def test_push_pull_roundtrip(start_adb_device: StartDevice, tmp_path: Path) -> None:
    # A 10 MB/s link: 0.3 s each way, long enough for adb to print progress as it goes.
    adb_device = start_adb_device(sync_bytes_per_s=10e6)
    local = random_file(tmp_path / "model part.bin", 3 * 1024 * 1024 + 123)
    remote = "/data/local/tmp/dir with space/it's \"quoted\" $(x).bin"
    pushed: list[tuple[int, int]] = []
    pulled: list[tuple[int, int]] = []
    with connect(adb_device.serial, adb_device.server_port) as t:
        t.run(["mkdir", "-p", "/data/local/tmp/dir with space"])
        t.put(local, remote, progress=lambda done, total: pushed.append((done, total)))
        remote_sum = t.run(["sha256sum", remote]).stdout.split()[0]
        assert remote_sum == sha256(local)
        back = tmp_path / "back 'here'.bin"
        t.get(remote, back, progress=lambda done, total: pulled.append((done, total)))
    assert sha256(back) == sha256(local)
    size = local.stat().st_size
    for seen in (pushed, pulled):
        assert seen[0] == (0, size) and seen[-1] == (size, size)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # Pushes are absorbed by loopback socket buffers (MBs) in bursts; pulls pace with the link.
    assert any(0 < d < size for d, _ in pulled), "adb's [ NN%] progress lines were not parsed"
    assert not list(tmp_path.glob(".*adb-partial"))


def test_put_appends_from_offset(adb_device: RunningDevice, tmp_path: Path) -> None:
    local = random_file(tmp_path / "weights.gguf", 2 * 1024 * 1024 + 77)
    data = local.read_bytes()
    first = tmp_path / "first"
    first.write_bytes(data[:1_000_000])
    remote = "/data/local/tmp/w 1.gguf"
    with connect(adb_device.serial, adb_device.server_port) as t:
        t.put(first, remote)
        seen: list[tuple[int, int]] = []
        t.put(local, remote, offset=1_000_000, progress=lambda d, n: seen.append((d, n)))
        assert t.run(["sha256sum", remote]).stdout.split()[0] == sha256(local)
        assert seen[0] == (1_000_000, len(data)) and seen[-1] == (len(data), len(data))
        # A remote longer than the offset (an earlier partial append) is cut back first.
        t.put(local, remote, offset=500_000)
        assert t.run(["sha256sum", remote]).stdout.split()[0] == sha256(local)
        # A remote shorter than the offset cannot be resumed.
        t.put(first, remote)
        with pytest.raises(TargetError, match="cannot resume"):
            t.put(local, remote, offset=1_500_000)
        with pytest.raises(TargetError, match="cannot resume"):
            t.put(local, "/data/local/tmp/missing", offset=10)
        assert not [p.name for p in adb_device.data_dir.iterdir() if "edgedeploy" in p.name]


def test_pull_missing_file(adb_device: RunningDevice, tmp_path: Path) -> None:
    with connect(adb_device.serial, adb_device.server_port) as t:
        with pytest.raises(TargetError, match="failed to stat remote object"):
            t.get("/data/local/tmp/nope", tmp_path / "nope")
    assert not list(tmp_path.iterdir())


# --- device selection and errors --------------------------------------------------------------


def test_only_device_is_chosen_without_serial(adb_device: RunningDevice) -> None:
    t = connect(None, adb_device.server_port)
    with t:
        assert t.serial == adb_device.serial
        assert t.run(["echo", "hi"]).stdout == "hi\n"


def test_no_device(adb_server: AdbServer) -> None:
    assert adb_server.devices() == {}, "a device is still attached from another test"
    with pytest.raises(TargetError, match="no Android device attached") as err:
        connect(None, adb_server.port)
    assert "adb devices" in err.value.hint
    with pytest.raises(TargetError, match=r"device 127\.0\.0\.1:1 not found") as err:
        connect("127.0.0.1:1", adb_server.port)


def test_several_devices_need_a_serial(start_adb_device: StartDevice) -> None:
    a, b = start_adb_device(), start_adb_device(shell_v2=False)
    with pytest.raises(TargetError, match="2 devices attached") as err:
        connect(None, a.server_port)
    assert a.serial in err.value.message and b.serial in err.value.message
    assert "adb:" in err.value.hint
    with connect(b.serial, b.server_port) as t:
        assert t.run(["echo", "b"]).stdout == "b\n"


def test_unauthorized(start_adb_device: StartDevice) -> None:
    dev = start_adb_device(state="unauthorized")
    for serial in (dev.serial, None):
        with pytest.raises(TargetError, match="is unauthorized") as err:
            connect(serial, dev.server_port)
        assert "accept the USB debugging prompt on the phone" in err.value.hint


def test_offline(start_adb_device: StartDevice) -> None:
    dev = start_adb_device(state="offline")
    with pytest.raises(TargetError, match="is offline") as err:
        connect(dev.serial, dev.server_port)
    assert "adb kill-server" in err.value.hint and "reconnect" in err.value.hint


def test_missing_adb_binary(monkeypatch: pytest.MonkeyPatch, adb_server: AdbServer) -> None:
    spec = TargetSpec(name="adb", kind="adb")
    with pytest.raises(TargetError, match="adb not found") as err:
        AdbTransport(spec, adb_path="/nonexistent/adb", server_port=adb_server.port)
    assert "apt-get install adb" in err.value.hint
    monkeypatch.setenv("ADB", "/nonexistent/adb")
    with pytest.raises(TargetError, match=r"\$ADB"):
        AdbTransport(spec, server_port=adb_server.port)
    monkeypatch.delenv("ADB")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TargetError, match="adb not found on PATH"):
        AdbTransport(spec, server_port=adb_server.port)


def test_device_lost_mid_session(adb_device: RunningDevice, tmp_path: Path) -> None:
    with connect(adb_device.serial, adb_device.server_port) as t:
        adb_device.device.stop()  # the cable is pulled
        with pytest.raises(TargetError) as err:
            t.run(["echo", "hi"])
        # adb failed, not the command: reported as a target problem, never as exit status 1.
        assert not isinstance(err.value, CommandFailed)
        assert adb_device.serial in err.value.message
        with pytest.raises(TargetError):
            t.put(random_file(tmp_path / "f", 10), "/data/local/tmp/f")
