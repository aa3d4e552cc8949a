"""SerialTransport against a real pty pair (socat) and a real shell behind a fake getty login.

No mocks: the console process (tests/boards/serial_console.py) echoes like a tty, asks for a
login and a password, and runs bash under its own pty. If socat is missing the fixtures fail with
the instruction to run the setup script.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boards.serial_console import SerialConsole
from toolchain.core.errors import CommandFailed, CommandTimeout, TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.transports.serial import NETWORK_HINT, SerialTransport, clean


def spec_for(console: SerialConsole, **fields: str | None) -> TargetSpec:
    return TargetSpec(name="pi-serial", kind="serial", device=str(console.device), baud=115200, **fields)  # type: ignore[arg-type]


def connect(console: SerialConsole, **kwargs: object) -> SerialTransport:
    kwargs.setdefault("login_user", "pi")
    kwargs.setdefault("login_password", "raspberry")
    return SerialTransport(spec_for(console), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pi() -> Iterator[SerialTransport]:
    """One session shared by the tests that do not need their own login (as a deploy uses one).
    It has a console of its own: the port is opened exclusively, as a real UART should be."""
    with SerialConsole() as console, connect(console) as transport:
        assert isinstance(transport, SerialTransport)
        yield transport


def test_login_runs_commands_with_exit_codes(pi: SerialTransport) -> None:
    assert pi.run(["echo", "hello"]).stdout == "hello\n"
    assert pi.run_shell("exit 0").exit_status == 0
    assert pi.run_shell("false", check=False).exit_status == 1
    result = pi.run_shell("echo out; echo err >&2; exit 7", check=False)
    assert (result.exit_status, result.stdout, result.stderr) == (7, "out\nerr\n", "")
    with pytest.raises(CommandFailed) as failed:
        pi.run_shell("echo last words; exit 7")
    assert failed.value.exit_status == 7 and "last words" in failed.value.output_tail
    assert pi.run_shell("printf %s no-newline").stdout == "no-newline"
    assert pi.run_shell("printf 'a\\n\\n\\n'").stdout == "a\n\n\n"
    # Each command runs in its own sh, so cd and exit do not leak into the session.
    pi.run_shell("cd / && exit 3", check=False)
    assert pi.run(["sh", "-c", "pwd"]).stdout.strip() == pi.home()
    assert not pi.capabilities.separate_stderr and pi.capabilities.file_transfer


@pytest.mark.parametrize(
    "weird",
    [
        "two words  and   spaces",
        "single 'quotes' and \"double\" quotes",
        "$(echo no) `echo no` ${HOME} $HOME \\ back\\slash !x !! %s %% *? ~",
        "line one\nline two\n\nline four\ttab",
        "; | & && || < > >> ( ) { } # not a comment",
        "ünïcödé ✓ 中文",
        "ctrl \x03 \x04 \x15 \x1a \x7f bytes",  # would act on a tty line: goes through a file
        "long " + "x" * 5000,  # longer than a tty line: goes through a file
        "-n",
    ],
)
def test_argv_arrives_unchanged(pi: SerialTransport, weird: str) -> None:
    assert pi.run(["printf", "%s", weird]).stdout == weird


def test_stdin_and_scripts(pi: SerialTransport) -> None:
    data = "first line\nsecond 'line' $(no)\n"
    assert pi.run(["cat"], stdin=data.encode()).stdout == data
    assert pi.run(["wc", "-c"], stdin=b"").stdout.strip() == "0"
    script = "set -e\nx=$(printf '%s' 'from script')\ncat <<EOF\n$x\nEOF\nexit 4\n"
    result = pi.run_script(script, check=False)
    assert (result.exit_status, result.stdout) == (4, "from script\n")


def test_escape_codes_stripped(pi: SerialTransport) -> None:
    out = pi.run_shell(r"printf '\033[1;31mred\033[0m \033[2J\033[Hplain \033]0;title\007end\r\n'").stdout
    assert out == "red plain end\n"


def test_timeout_interrupts_and_recovers(pi: SerialTransport) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeout):
        pi.run(["sleep", "30"], timeout=1)
    assert time.monotonic() - start < 2.5
    assert pi.run(["echo", "alive"]).stdout == "alive\n"
    assert pi.run_shell("exit 5", check=False).exit_status == 5


def test_put_get_round_trip(pi: SerialTransport, tmp_path: Path) -> None:
    # The rig's shell runs on this machine, so the "remote" path can be checked directly too.
    payload = os.urandom(20 * 1024)
    local, remote, back = tmp_path / "model.bin", tmp_path / "on-board.bin", tmp_path / "back.bin"
    local.write_bytes(payload)
    seen: list[tuple[int, int]] = []
    pi.put(local, str(remote), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(payload), len(payload))
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert not Path(f"{remote}.edgedeploy-partial").exists()
    pi.get(str(remote), back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    pi.put(empty, str(tmp_path / "empty-on-board"))
    pi.get(str(tmp_path / "empty-on-board"), tmp_path / "empty-back")
    assert (tmp_path / "empty-back").read_bytes() == b""
    with pytest.raises(TargetError):
        pi.get(str(tmp_path / "missing"), tmp_path / "never")


def test_put_get_on_a_board_without_base64_or_sha256sum(pi: SerialTransport, tmp_path: Path) -> None:
    # Minimal boards: bytes go as printf octal escapes and come back through od; POSIX cksum checks.
    payload = os.urandom(7000) + bytes(range(256))
    local, remote, back = tmp_path / "in.bin", tmp_path / "on-board.bin", tmp_path / "back.bin"
    local.write_bytes(payload)
    saved = set(pi.tools)
    pi.tools -= {"base64", "sha256sum", "openssl", "python3"}
    try:
        pi.put(local, str(remote))
        pi.get(str(remote), back)
    finally:
        pi.tools = saved
    assert remote.read_bytes() == payload and back.read_bytes() == payload


def test_dash_console(tmp_path: Path) -> None:
    # dash, as /bin/sh on Debian: no readline, different SIGINT handling than bash.
    with SerialConsole(shell=["/bin/sh", "-i"]) as console, connect(console) as pi:
        assert pi.run(["printf", "%s", "a 'b' $(c)\nd"]).stdout == "a 'b' $(c)\nd"
        assert pi.run_shell("echo x; exit 7", check=False).exit_status == 7
        with pytest.raises(CommandTimeout):
            pi.run(["sleep", "30"], timeout=1)
        assert pi.run(["echo", "alive"]).stdout == "alive\n"
        assert pi.run(["cat"], stdin=b"in\x03put").stdout == "in\x03put"


def test_console_on_an_emulated_board() -> None:
    # The shell runs inside the rpi4-4gb overlay (tests/boards/overlay.py): the board's files show.
    board = Path(__file__).resolve().parents[1] / "boards" / "rpi4-4gb"
    arch = re.search(r"^arch:\s*(\S+)", (board / "board.yaml").read_text(), re.MULTILINE)
    assert arch
    with SerialConsole(board) as console, connect(console) as pi:
        assert pi.run(["uname", "-m"]).stdout.strip() == arch.group(1)
        assert "Raspberry Pi 4" in pi.run(["cat", "/proc/device-tree/model"]).stdout
        assert pi.run(["hostname"]).stdout.strip() == console.hostname


def test_file_over_limit_refused_with_estimate(serial_console: SerialConsole, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (1 << 20))
    model = tmp_path / "model.gguf"
    with model.open("wb") as f:  # sparse: 4 GiB on paper, nothing on disk
        f.truncate(4 << 30)
    with connect(serial_console, max_file_bytes=4096) as pi:
        assert pi.capabilities.max_file_bytes == 4096 and not pi.capabilities.resumable_put
        with pytest.raises(TargetError) as small:
            pi.put(big, str(tmp_path / "never"))
        # 1 MiB * 4/3 (base64) / 11520 bytes/s = 121 s
        assert f"{big} is 1.0 MiB; over serial at 115200 baud that takes about 2 minutes" in small.value.message
        assert small.value.hint == NETWORK_HINT
        with pytest.raises(TargetError) as huge:
            pi.put(model, str(tmp_path / "never"))
        assert "is 4096.0 MiB; over serial at 115200 baud that takes about 138.1 hours" in huge.value.message
        assert not (tmp_path / "never").exists()


def test_kernel_logs_never_break_framing(noisy_serial_console: SerialConsole) -> None:
    with connect(noisy_serial_console) as pi:
        for i in range(50):
            if i % 10 == 9:  # some longer output, so printk lands inside it
                result = pi.run_shell(f"seq 1 300; exit {i % 4}", check=False)
                expected = "".join(f"{n}\n" for n in range(1, 301))
            else:
                result = pi.run_shell(f"echo line{i}; printf 'no newline {i}'; exit {i % 4}", check=False)
                expected = f"line{i}\nno newline {i}"
            assert (result.exit_status, result.stdout) == (i % 4, expected), i


def test_wrong_password_is_a_target_error(serial_console: SerialConsole) -> None:
    with pytest.raises(TargetError) as err:
        connect(serial_console, login_password="wrong")
    assert "login as 'pi'" in err.value.message and "Login incorrect" in err.value.message
    assert err.value.exit_code == 3 and "wrong" not in err.value.message + err.value.hint


def test_credentials_from_target_and_env(serial_console: SerialConsole, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_CONSOLE_PASSWORD", "raspberry")
    spec = spec_for(serial_console, login_user="pi", login_password_env="PI_CONSOLE_PASSWORD")
    with SerialTransport(spec) as pi:
        assert pi.run(["id", "-un"]).ok
    monkeypatch.delenv("PI_CONSOLE_PASSWORD")
    monkeypatch.setenv("EDGEDEPLOY_SERIAL_USER", "pi")
    monkeypatch.setenv("EDGEDEPLOY_SERIAL_PASSWORD", "raspberry")
    with SerialTransport(spec_for(serial_console)) as pi:
        assert pi.run(["echo", "ok"]).stdout == "ok\n"


def test_reattaches_to_a_shell_left_logged_in(serial_console: SerialConsole) -> None:
    first = connect(serial_console)
    with pytest.raises(TargetError) as busy:  # the port is held: a second opener is refused
        connect(serial_console)
    assert "no other program" in busy.value.hint
    first._close_port()  # a crashed run: the shell stays logged in, silent, without echo
    with connect(serial_console) as second:
        assert second.run(["echo", "again"]).stdout == "again\n"


def test_unopenable_device(tmp_path: Path) -> None:
    spec = TargetSpec(name="nowhere", kind="serial", device=str(tmp_path / "ttyUSB9"))
    with pytest.raises(TargetError) as err:
        SerialTransport(spec, login_user="pi", login_password="x")
    assert "dialout" in err.value.hint and "ttyUSB9" in err.value.message


def test_clean_removes_kernel_lines_anywhere() -> None:
    raw = b"hel[  123.456789] usb 1-1.3: new device\r\nlo\r\n[    0.000000] Booting Linux\r\n\x1b[32mok\x1b[0m\r\n"
    assert clean(raw) == b"hello\nok\n"
