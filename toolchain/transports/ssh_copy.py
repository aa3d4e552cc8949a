"""Bulk file copies for the SSH transport.

Fast path (copies of 32 MiB and up, see ssh.SYSTEM_SSH_MIN_BYTES): the system OpenSSH client
runs `cat` on the target, with the local file itself as its stdin (upload) or stdout (download).
No byte passes through Python, so it moves data as fast as scp does; paramiko, whose framing and
MACs run in Python, reached about 2/3 of scp over loopback here, and pipelined SFTP about 1/2
(SFTP prefetch downloads far less). Progress comes from the file offset the ssh child shares
with us (same open file description), polled every 10 ms.

Fallback (small files, no ssh binary, or it cannot log in non-interactively, e.g. password auth):
the same remote commands over a channel of the already open paramiko connection.

Both paths run plain POSIX sh + cat on the target (busybox included): no SFTP subsystem needed.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import paramiko

from toolchain.core.errors import BadInputError, TargetError
from toolchain.transports.base import ProgressFn
from toolchain.transports.process import dies_with_us

CHUNK = 1 << 20  # fallback path: bytes per channel write/read
POLL_S = 0.01  # fast path: offset polling interval (~3 MB between reports at 300 MB/s)
STALL_S = 120.0  # no byte moved for this long: give up rather than hang
CHANNEL_WINDOW = 16 << 20  # fallback path: receive window, so downloads are not RTT-bound
EXIT_SHORT, EXIT_TRUNCATE = 98, 99  # our remote script's own failures (sh uses 1/2/126/127)
PARTIAL_HINT = "the partial file is left on the target; run again to resume (or check the link and the target)"


@dataclass(frozen=True)
class SshClientCommand:
    """How the system ssh reaches the target, mirroring what fabric/paramiko resolved.

    destination is the host as the user wrote it (maybe an ssh_config alias), so ssh applies the
    same config: HostName, IdentityFile, ProxyJump, ... Host keys are checked strictly against
    the same known_hosts files: the paramiko connection already verified (or recorded) the key.
    """

    destination: str
    port: int
    user: str
    config_path: str | None
    known_hosts: tuple[Path, ...]
    connect_timeout: float
    ssh: str = "ssh"

    def argv(self, remote_command: str) -> list[str]:
        known = " ".join(_config_quote(str(p)) for p in self.known_hosts)
        argv = [self.ssh]
        if self.config_path:
            argv += ["-F", self.config_path]
        for opt in (
            "BatchMode=yes",  # never prompt: a failure here falls back to paramiko
            "StrictHostKeyChecking=yes",
            f"UserKnownHostsFile={known}",
            "UpdateHostKeys=no",  # our known_hosts files are edited by us only
            "CheckHostIP=no",
            f"ConnectTimeout={max(1, math.ceil(self.connect_timeout))}",
            "ServerAliveInterval=5",  # a dead link ends the copy in ~15 s instead of hanging
            "ServerAliveCountMax=3",
            "ClearAllForwardings=yes",  # a LocalForward in the user's config must not collide
            "RequestTTY=no",
            "LogLevel=ERROR",
        ):
            argv += ["-o", opt]
        return [*argv, "-p", str(self.port), "-l", self.user, "--", self.destination, remote_command]


def _config_quote(path: str) -> str:
    return f'"{path}"' if any(c.isspace() for c in path) else path


def find_ssh() -> str | None:
    return shutil.which("ssh")


def probe(cmd: SshClientCommand) -> tuple[bool, str]:
    """Can the system ssh log in without prompting? (ok, stderr) — one extra handshake, cached."""
    try:
        proc = subprocess.run(
            cmd.argv("exit 0"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=cmd.connect_timeout + 20,
            start_new_session=True,  # no controlling tty: ssh cannot prompt even if it wanted to
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return proc.returncode == 0, proc.stderr.decode("utf-8", "replace").strip()


# --- remote commands --------------------------------------------------------------------------


def upload_command(remote: str, offset: int) -> str:
    """sh line that stores stdin at remote; with offset > 0, at byte offset of the existing file."""
    q = shlex.quote(remote)
    if offset == 0:
        return f"exec cat > {q}"
    # ls -n field 5 is the size on GNU, busybox and BSD; wc -c would read the whole file on busybox.
    return (
        f"set -f; f={q}; s=$(ls -Lnd -- \"$f\") || exit {EXIT_SHORT}; set -- $s; "
        f'if [ "$5" -lt {offset} ]; then '
        f'echo "remote file has $5 bytes, fewer than the resume offset {offset}" >&2; exit {EXIT_SHORT}; fi; '
        f'if [ "$5" -gt {offset} ]; then dd if=/dev/null of="$f" bs=1 seek={offset} 2>/dev/null '
        f'|| {{ echo "cannot truncate to {offset} bytes" >&2; exit {EXIT_TRUNCATE}; }}; fi; '
        'exec cat >> "$f"'
    )


def download_command(remote: str) -> str:
    return f"exec cat < {shlex.quote(remote)}"


def size_command(remote: str) -> str:
    return f"set -f; s=$(ls -Lnd -- {shlex.quote(remote)}) && set -- $s && printf '%s' \"$5\""


# --- fast path: system ssh --------------------------------------------------------------------


def ssh_upload(
    cmd: SshClientCommand, local: Path, remote: str, offset: int, total: int, progress: ProgressFn | None, who: str
) -> None:
    with _open_local(local, "rb") as src:
        src.seek(offset)
        _run_ssh_copy(cmd.argv(upload_command(remote, offset)), src, None, total, progress,
                      f"{who}: upload of {local} to {remote}")


def ssh_download(
    cmd: SshClientCommand, remote: str, local: Path, total: int, progress: ProgressFn | None, who: str
) -> None:
    with _open_local(local, "wb") as dst:
        _run_ssh_copy(cmd.argv(download_command(remote)), None, dst, total, progress,
                      f"{who}: download of {remote} to {local}")


def _run_ssh_copy(
    argv: list[str], src: IO[bytes] | None, dst: IO[bytes] | None, total: int, progress: ProgressFn | None, what: str
) -> None:
    shared = src if src is not None else dst
    assert shared is not None
    fd = shared.fileno()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty ssh can never block on it
        proc = subprocess.Popen(
            dies_with_us(argv),
            stdin=src if src is not None else subprocess.DEVNULL,
            stdout=dst if dst is not None else subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            _watch(proc, lambda: os.lseek(fd, 0, os.SEEK_CUR), total, progress)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace").strip()
    done = os.lseek(fd, 0, os.SEEK_CUR)
    if proc.returncode != 0:
        # 255: ssh itself failed (link dropped); < 0: we killed it after a stall.
        raise _copy_error(what, proc.returncode, stderr, done, total, connection_lost=proc.returncode == 255 or proc.returncode < 0)
    if progress:
        progress(total, total)


def _watch(proc: subprocess.Popen[bytes], position: Callable[[], int], total: int, progress: ProgressFn | None) -> None:
    last, last_move = -1, time.monotonic()
    while proc.poll() is None:
        time.sleep(POLL_S)  # plain sleep: Popen.wait(timeout) would wake ~5x as often
        pos = position()
        now = time.monotonic()
        if pos != last:
            last, last_move = pos, now
            if progress:
                progress(min(pos, total), total)
        elif now - last_move > STALL_S:
            proc.kill()  # returncode becomes -9: reported as a lost connection below
            proc.wait()
            return


# --- fallback: paramiko channel ---------------------------------------------------------------


def close_quietly(chan: paramiko.Channel) -> None:
    """Closing a channel on a dead link sends a message and raises; the link's loss is already reported."""
    try:
        chan.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def channel_upload(
    transport: paramiko.Transport, local: Path, remote: str, offset: int, total: int,
    progress: ProgressFn | None, who: str,
) -> None:
    what = f"{who}: upload of {local} to {remote}"
    done = offset
    chan = _open(transport, upload_command(remote, offset), what, total, done)
    try:
        with _open_local(local, "rb") as src:
            src.seek(offset)
            while chunk := src.read(CHUNK):
                chan.sendall(chunk)  # socket.timeout if the window stays shut STALL_S; OSError if closed
                done += len(chunk)
                if progress:
                    progress(done, total)
        chan.shutdown_write()
        status = _exit_status(chan)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise _copy_error(what, -1, _stderr(chan) or str(exc) or type(exc).__name__, done, total,
                          connection_lost=True) from exc
    finally:
        close_quietly(chan)
    if status != 0:
        raise _copy_error(what, status, _stderr(chan), done, total, connection_lost=status < 0)
    if progress and total == offset:
        progress(total, total)


def channel_download(
    transport: paramiko.Transport, remote: str, local: Path, total: int, progress: ProgressFn | None, who: str
) -> None:
    what = f"{who}: download of {remote} to {local}"
    done = 0
    chan = _open(transport, download_command(remote), what, total, done)
    try:
        chan.shutdown_write()
        with _open_local(local, "wb") as dst:
            while data := chan.recv(CHUNK):
                dst.write(data)
                done += len(data)
                if progress:
                    progress(done, total)
        status = _exit_status(chan)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise _copy_error(what, -1, _stderr(chan) or str(exc) or type(exc).__name__, done, total,
                          connection_lost=True) from exc
    finally:
        close_quietly(chan)
    if status != 0:
        raise _copy_error(what, status, _stderr(chan), done, total, connection_lost=status < 0)
    if progress and total == 0:
        progress(0, 0)


def _open_local(path: Path, mode: str) -> IO[bytes]:
    try:
        return path.open(mode)
    except OSError as exc:
        raise BadInputError(f"cannot open {path}: {exc.strerror or exc}", "check the local path") from exc


def _open(transport: paramiko.Transport, command: str, what: str, total: int, done: int) -> paramiko.Channel:
    try:
        chan = transport.open_session(window_size=CHANNEL_WINDOW, timeout=STALL_S)
        chan.settimeout(STALL_S)
        chan.exec_command(command)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise _copy_error(what, -1, str(exc) or type(exc).__name__, done, total, connection_lost=True) from exc
    return chan


def _exit_status(chan: paramiko.Channel) -> int:
    """The remote exit status; -1 when the connection died before reporting one."""
    deadline = time.monotonic() + STALL_S
    while not chan.status_event.wait(0.1):
        if chan.closed or not chan.get_transport().is_active() or time.monotonic() > deadline:
            return int(chan.exit_status) if chan.status_event.is_set() else -1
    return int(chan.exit_status)


def _stderr(chan: paramiko.Channel) -> str:
    parts: list[bytes] = []
    while chan.recv_stderr_ready():
        parts.append(chan.recv_stderr(65536))
    return b"".join(parts).decode("utf-8", "replace").strip()


def _copy_error(what: str, status: int, stderr: str, done: int, total: int, *, connection_lost: bool) -> TargetError:
    last = stderr.splitlines()[-1] if stderr else ""
    if connection_lost:
        # `done` is what left this machine: bytes in flight on a slow link (up to the socket buffers
        # and the channel window) may never have reached the target, so this is not what it holds.
        return TargetError(
            f"{what}: connection lost with {done} of {total} bytes sent" + (f": {last}" if last else ""), PARTIAL_HINT
        )
    return TargetError(
        f"{what} failed (exit {status}) after {done} of {total} bytes" + (f": {last}" if last else ""),
        "check that the directory exists and is writable, and that the target's disk has room",
    )
