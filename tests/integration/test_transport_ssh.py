"""SshTransport against real OpenSSH sshd boards (tests/boards/sshd.py): no mocks."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.boards.sshd import SshBoard
from toolchain.core.errors import EXIT_TARGET, CommandFailed, CommandTimeout, TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.transports.ssh import SshTransport

COPY_PATHS = ["ssh", "channel"]  # system OpenSSH client, paramiko channel fallback


@pytest.fixture(scope="module")
def board() -> Iterator[SshBoard]:
    """One board for the tests that do not kill connections."""
    with SshBoard("rpi4-4gb") as b:
        yield b


@pytest.fixture(autouse=True)
def isolated_ssh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ~/.ssh, agent or password from the machine running the tests leaks into them."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD", "EDGEDEPLOY_SSH_COPY"):
        monkeypatch.delenv(var, raising=False)
    return home


def alias_transport(b: SshBoard, *, via: str = "auto") -> SshTransport:
    """Transport that names the board by its ssh_config Host alias only (host/user/port None)."""
    t = SshTransport(TargetSpec(name=b.name, kind="ssh"), ssh_config_path=str(b.ssh_config_path))
    t.copy_via = via
    return t


def direct_transport(
    b: SshBoard, tmp_path: Path, *, known_hosts: Path, key: Path | None = None, extra: str = "",
    accept_new_host_key: bool = False,
) -> SshTransport:
    """Transport with explicit host/port/user; the config only supplies key and known_hosts file."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host *\n    IdentityFile {key or b.key_path}\n    IdentitiesOnly yes\n"
                   f"    UserKnownHostsFile {known_hosts}\n{extra}")
    spec = TargetSpec(name="board", kind="ssh", host=b.host, port=b.port, user=b.user)
    return SshTransport(spec, ssh_config_path=str(cfg), accept_new_host_key=accept_new_host_key)


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def target_error(fn: Callable[[], object]) -> TargetError:
    with pytest.raises(TargetError) as info:
        fn()
    assert info.value.exit_code == EXIT_TARGET
    assert info.value.hint
    return info.value


# --- commands ---------------------------------------------------------------------------------


def test_exit_status_stdout_stderr(board: SshBoard) -> None:
    with alias_transport(board) as t:
        r = t.run_shell("echo out; echo err >&2; exit 7", check=False)
        assert (r.exit_status, r.stdout, r.stderr) == (7, "out\n", "err\n")
        assert t.run(["true"]).ok
        with pytest.raises(CommandFailed) as info:
            t.run(["sh", "-c", "echo boom >&2; exit 4"])
        assert info.value.exit_status == 4 and "boom" in info.value.output_tail


WEIRD = [
    "two words",
    "it's \"quoted\"",
    "$(echo injected) and `echo injected` and $HOME",
    "semi; colon && amp || pipe | redirect > /dev/null",
    "line one\nline two\n",
    "back\\slash \\n glob * ? [a]",
    "-n",
    "tab\tand unicode: héllo ✓",
    "",
]


def test_arguments_arrive_unchanged(board: SshBoard) -> None:
    with alias_transport(board) as t:
        for weird in WEIRD:
            assert t.run(["printf", "%s", weird]).stdout == weird
        # env values are quoted the same way
        assert t.run(["sh", "-c", 'printf %s "$X"'], env={"X": WEIRD[2]}).stdout == WEIRD[2]


def test_stdin_and_scripts(board: SshBoard) -> None:
    with alias_transport(board) as t:
        r = t.run_script("x=$(echo 41)\necho $((x + 1))\necho to-err >&2\nexit 3\n", check=False)
        assert (r.exit_status, r.stdout, r.stderr) == (3, "42\n", "to-err\n")
        data = "".join(f"line {i}\n" for i in range(50_000))  # > channel window: fed while output flows
        assert t.run(["cat"], stdin=data.encode()).stdout == data


def test_command_timeout_kills_remote_process(board: SshBoard, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with alias_transport(board) as t:
        start = time.monotonic()
        with pytest.raises(CommandTimeout):
            t.run_shell(f"echo $$ > {pidfile}; exec sleep 300", timeout=1)
        assert time.monotonic() - start < 5
        pid = pidfile.read_text().strip()  # a pid inside the board's PID namespace: ask the board
        deadline = time.monotonic() + 5
        while t.run_shell(f"kill -0 {pid}", check=False).ok and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not t.run_shell(f"kill -0 {pid} 2>/dev/null", check=False).ok, "remote sleep survived the timeout"
        assert t.run(["echo", "still usable"]).stdout == "still usable\n"


def test_endless_output_is_refused_not_hoarded(board: SshBoard, tmp_path: Path) -> None:
    """A board that prints without end is stopped past MAX_OUTPUT_BYTES, well before the timeout."""
    with alias_transport(board) as t:
        start = time.monotonic()
        with pytest.raises(TargetError, match="printed more than 16 MiB"):
            t.run(["sh", "-c", "exec yes edgedeploy"], timeout=120)
        assert time.monotonic() - start < 60
        assert t.run(["echo", "still usable"]).stdout == "still usable\n"
        big = t.home() + "/big.jsonl"
        t.run(["sh", "-c", 'head -c 300000 /dev/zero > "$1"', "sh", big])
        with pytest.raises(TargetError, match="more than the 100000 expected"):
            t.get(big, tmp_path / "big.jsonl", max_bytes=100_000)
        assert not (tmp_path / "big.jsonl").exists()
        t.get(big, tmp_path / "big.jsonl", max_bytes=300_000)
        assert (tmp_path / "big.jsonl").stat().st_size == 300_000


def test_command_killed_by_signal(board: SshBoard) -> None:
    with alias_transport(board) as t:
        r = t.run_shell("echo before; kill -9 $$", check=False)
        assert r.exit_status != 0 and r.stdout == "before\n"
        assert t.run(["true"]).ok


def test_command_on_dropped_connection_raises(ssh_board_factory: Callable[..., SshBoard]) -> None:
    b = ssh_board_factory("rpi4-4gb")
    with alias_transport(b) as t:
        t.run(["true"])
        threading.Timer(0.5, b.kill_connections).start()
        start = time.monotonic()
        err = target_error(lambda: t.run(["sleep", "60"], timeout=120))
        assert "connection lost" in err.message and time.monotonic() - start < 5
        assert t.run(["echo", "back"]).stdout == "back\n"  # reconnects on the next command


def test_capabilities_and_home(board: SshBoard) -> None:
    with alias_transport(board) as t:
        caps = t.capabilities
        assert caps.file_transfer and caps.separate_stderr and caps.resumable_put
        home = t.home()
        assert home.startswith("/") and t.home() == home


def test_ssh_config_alias_resolution(board: SshBoard) -> None:
    # host/user/port all None: HostName, Port, User, IdentityFile, UserKnownHostsFile from the config.
    with alias_transport(board) as t:
        assert t.run(["id", "-un"]).stdout.strip() == board.user
        assert t.run_shell("echo $SSH_CONNECTION", check=False).stdout.split()[-1] == str(board.port)
    spec = TargetSpec(name="anything", kind="ssh", host=board.name)  # host given as the alias
    with SshTransport(spec, ssh_config_path=str(board.ssh_config_path)) as t:
        assert t.run(["printf", "ok"]).stdout == "ok"


def test_proxyjump(ssh_board_factory: Callable[..., SshBoard], tmp_path: Path) -> None:
    jump, target = ssh_board_factory("rpi4-4gb"), ssh_board_factory("orangepi5")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        jump.ssh_config_path.read_text().replace(f"Host {jump.name}", "Host jumphost")
        + target.ssh_config_path.read_text().replace(f"Host {target.name}", "Host behind")
        + "    ProxyJump jumphost\n"
    )
    expected = target.run("uname -n").stdout
    assert expected and expected != jump.run("uname -n").stdout
    src = random_file(tmp_path / "src.bin", 3 << 20)
    t = SshTransport(TargetSpec(name="behind", kind="ssh"), ssh_config_path=str(cfg))
    with t:
        assert t.run(["uname", "-n"]).stdout == expected
        for via in COPY_PATHS:
            t.copy_via = via
            t.put(src, str(tmp_path / f"up-{via}.bin"))
            assert (tmp_path / f"up-{via}.bin").read_bytes() == src.read_bytes()


# --- host keys --------------------------------------------------------------------------------


def test_unknown_host_key_refused_with_fingerprint(board: SshBoard, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    err = target_error(lambda: direct_transport(board, tmp_path, known_hosts=known).run(["true"]))
    assert err.message == (f"[{board.host}]:{board.port}: host key not in known_hosts "
                           f"(ED25519 key {board.host_key_fingerprint})")
    assert "--accept-new-host-key" in err.hint
    assert known.read_text() == ""


@pytest.mark.parametrize("hashed", [False, True])
def test_accept_new_records_key_then_strict_works(board: SshBoard, tmp_path: Path, hashed: bool) -> None:
    known = tmp_path / "known_hosts"
    extra = "    HashKnownHosts yes\n" if hashed else ""
    with direct_transport(board, tmp_path, known_hosts=known, extra=extra, accept_new_host_key=True) as t:
        assert t.run(["printf", "first"]).stdout == "first"
    line = known.read_text()
    assert line.startswith("|1|") if hashed else line.startswith(f"[{board.host}]:{board.port} ssh-ed25519 ")
    # OpenSSH itself finds the recorded entry (format, [host]:port form, hashing)
    found = subprocess.run(["ssh-keygen", "-F", f"[{board.host}]:{board.port}", "-f", str(known)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout
    with direct_transport(board, tmp_path, known_hosts=known) as t:  # no flag now
        assert t.run(["printf", "second"]).stdout == "second"
        t.put(random_file(tmp_path / "f", 1000), str(tmp_path / "g"))  # system ssh trusts it too
    assert known.read_text() == line  # nothing added twice


def test_target_spec_accept_new(board: SshBoard, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host *\n    IdentityFile {board.key_path}\n    UserKnownHostsFile {known}\n")
    spec = TargetSpec(name="b", kind="ssh", host=board.host, port=board.port, user=board.user, host_key="accept-new")
    with SshTransport(spec, ssh_config_path=str(cfg)) as t:
        assert t.run(["true"]).ok
    assert board.host_key_fingerprint and known.read_text().count("\n") == 1


def test_changed_host_key_refused_even_with_accept_new(board: SshBoard, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{board.host}]:{board.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    before = known.read_text()
    for accept in (False, True):
        t = direct_transport(board, tmp_path, known_hosts=known, accept_new_host_key=accept)
        err = target_error(lambda t=t: t.run(["true"]))  # type: ignore[misc]
        assert "HOST KEY CHANGED" in err.message and board.host_key_fingerprint in err.message
        assert f"ssh-keygen -R '[{board.host}]:{board.port}'" in err.hint
    assert known.read_text() == before


# --- connection failures ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_failures_have_distinct_messages(board: SshBoard, tmp_path: Path) -> None:
    known = board.known_hosts_path
    refused = target_error(lambda: SshTransport(
        TargetSpec(name="b", kind="ssh", host="127.0.0.1", port=_closed_port(), user=board.user)).run(["true"]))
    dns = target_error(lambda: SshTransport(
        TargetSpec(name="b", kind="ssh", host="nonexistent.invalid", user=board.user)).run(["true"]))
    wrong_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    auth = target_error(lambda: direct_transport(board, tmp_path, known_hosts=known, key=wrong_key).run(["true"]))
    assert "connection refused" in refused.message
    assert "cannot resolve host name 'nonexistent.invalid'" in dns.message
    assert f"authentication failed for {board.user}@{board.host}:{board.port}" in auth.message
    assert len({refused.message, dns.message, auth.message}) == 3
    assert len({refused.hint, dns.hint, auth.hint}) == 3


def test_connect_timeout(tmp_path: Path) -> None:
    # A listener that never speaks: TCP connects, the SSH banner never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        spec = TargetSpec(name="b", kind="ssh", host="127.0.0.1", port=silent.getsockname()[1], user="root")
        start = time.monotonic()
        err = target_error(lambda: SshTransport(spec, connect_timeout=1).run(["true"]))
        assert time.monotonic() - start < 5
    assert "timed out after 1 s" in err.message


# --- files ------------------------------------------------------------------------------------


@pytest.fixture(params=COPY_PATHS)
def copy_via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_put_get_roundtrip_with_progress(board: SshBoard, tmp_path: Path, copy_via: str) -> None:
    src = random_file(tmp_path / "src.bin", (24 << 20) + 12345)
    remote = tmp_path / "remote dir with 'quote'" / "model $x.gguf.partial"
    remote.parent.mkdir()
    calls: list[tuple[int, int]] = []
    with alias_transport(board, via=copy_via) as t:
        t.put(src, str(remote), progress=lambda d, n: calls.append((d, n)))
        assert remote.read_bytes() == src.read_bytes()
        assert calls[-1] == (src.stat().st_size, src.stat().st_size)
        assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
        if copy_via == "channel":  # deterministic chunks; the ssh path reports by time
            assert max(b[0] - a[0] for a, b in itertools.pairwise(calls)) <= 4 << 20
        back = tmp_path / "back.bin"
        got: list[tuple[int, int]] = []
        t.get(str(remote), back, progress=lambda d, n: got.append((d, n)))
        assert back.read_bytes() == src.read_bytes()
        assert got[-1] == (src.stat().st_size, src.stat().st_size)
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        t.put(empty, str(tmp_path / "empty-remote"))
        assert (tmp_path / "empty-remote").read_bytes() == b""


def test_put_resume_from_offset(board: SshBoard, tmp_path: Path, copy_via: str) -> None:
    src = random_file(tmp_path / "src.bin", (6 << 20) + 7)
    data = src.read_bytes()
    remote = tmp_path / "remote.partial"
    with alias_transport(board, via=copy_via) as t:
        offset = (2 << 20) + 3
        remote.write_bytes(data[:offset])  # what an interrupted upload left
        t.put(src, str(remote), offset=offset)
        assert remote.read_bytes() == data
        remote.write_bytes(data[:offset] + b"garbage past the offset")  # longer than offset: cut back
        t.put(src, str(remote), offset=offset)
        assert remote.read_bytes() == data
        remote.write_bytes(data[:10])  # shorter than offset: refused, never zero-filled
        err = target_error(lambda: t.put(src, str(remote), offset=offset))
        assert "fewer than the resume offset" in err.message
        assert remote.read_bytes() == data[:10]
        err = target_error(lambda: t.put(src, str(tmp_path / "no-such-dir" / "f")))
        assert "no-such-dir" in err.message


def test_get_missing_file(board: SshBoard, tmp_path: Path) -> None:
    with alias_transport(board) as t:
        err = target_error(lambda: t.get(str(tmp_path / "nope"), tmp_path / "x"))
        assert "cannot read" in err.message


@pytest.mark.parametrize("via", COPY_PATHS)
def test_upload_interrupted_by_dropped_connection(
    ssh_board_factory: Callable[..., SshBoard], tmp_path: Path, via: str
) -> None:
    b = ssh_board_factory("rpi4-4gb")
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB to read, nothing to write locally
    remote = tmp_path / "remote.partial"
    killed_at: list[float] = []
    killers: list[threading.Thread] = []

    def progress(done: int, total: int) -> None:
        if done >= 16 << 20 and not killed_at:
            killed_at.append(time.monotonic())
            killers.append(threading.Thread(target=b.kill_connections))
            killers[-1].start()

    with alias_transport(b, via=via) as t:
        t.run(["true"])
        err = target_error(lambda: t.put(src, str(remote), progress=progress))
        assert killed_at and time.monotonic() - killed_at[0] < 5
        assert "connection lost" in err.message and "partial" in err.hint
        assert 0 < remote.stat().st_size < 1 << 30  # partial file left as is
        for k in killers:  # the killer may still be sweeping sessions: it must not take the new one too
            k.join(30)
        assert t.run(["echo", "reconnected"]).stdout == "reconnected\n"


def test_killed_host_process_takes_its_ssh_copy_along(board: SshBoard, tmp_path: Path) -> None:
    """An orphaned ssh would keep appending to the .partial while a resumed upload writes it too."""
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        f.truncate(4 << 30)
    remote = tmp_path / "remote.partial"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from toolchain.core.nouns import TargetSpec
from toolchain.transports.ssh import SshTransport
t = SshTransport(TargetSpec(name={board.name!r}, kind="ssh"), ssh_config_path={str(board.ssh_config_path)!r})
t.copy_via = "ssh"
def die(done, total):
    if done >= 16 << 20:
        os.kill(os.getpid(), signal.SIGKILL)
t.put(Path({str(src)!r}), {str(remote)!r}, progress=die)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    time.sleep(0.5)
    size = remote.stat().st_size
    time.sleep(1.0)
    assert remote.stat().st_size == size < 4 << 30
