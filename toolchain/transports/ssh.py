"""Boards reached over SSH: fabric resolves ~/.ssh/config, paramiko runs commands, bulk copies
go through the system OpenSSH client when it can log in (see ssh_copy for why)."""

from __future__ import annotations

import errno
import getpass
import logging
import secrets
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection

from toolchain.core import settings
from toolchain.core.errors import BadInputError, TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.transports import ssh_copy
from toolchain.transports.base import MAX_OUTPUT_BYTES, Capabilities, ProgressFn, Transport
from toolchain.transports.process import OutputTooLarge
from toolchain.transports.ssh_hostkeys import (
    KnownHostsPolicy,
    changed_key_error,
    host_key_name,
    known_hosts_files,
    load_known_hosts,
)

# paramiko logs a link's loss at ERROR from its transport thread ("Socket exception: Connection
# reset by peer (104)"); with no handler configured Python prints that on stderr, across the lab's
# live view, while edgedeploy reports the same loss itself, classified. A NullHandler stops only
# that fallback: handlers an application installs (--debug) still get the records.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

READ_CHUNK = 1 << 16
KEEPALIVE_S = 15  # keeps NAT/firewall state alive between a long build and the next command
COPY_VIA = ("auto", "ssh", "channel")
RUN_ID_VAR = settings.RUN_ID
# Below this a copy rides the open paramiko connection: a new ssh handshake (0.1-0.5 s) would
# cost more than the faster client saves.
SYSTEM_SSH_MIN_BYTES = 32 << 20


class SshTransport(Transport):
    capabilities = Capabilities(file_transfer=True, max_file_bytes=None, separate_stderr=True, resumable_put=True,
                                stdin_ends_with_host=True)

    def __init__(
        self,
        spec: TargetSpec,
        *,
        accept_new_host_key: bool = False,
        connect_timeout: float = 10.0,
        ssh_config_path: str | None = None,
        password_env: str = settings.SSH_PASSWORD,
    ) -> None:
        host = spec.host or spec.name  # no host: the target's name is an ssh_config Host alias
        if not host:
            raise BadInputError("ssh target without a host", "give user@host[:port] or a Host alias from ~/.ssh/config")
        if host.startswith("-"):
            raise BadInputError(f"ssh host {host!r} starts with '-'", "give a host name or address")
        if spec.host_key not in ("strict", "accept-new"):
            raise BadInputError(f"{spec.name}: host_key must be strict or accept-new, not {spec.host_key!r}",
                                "fix the target definition")
        super().__init__(spec.name or host)
        self.spec = spec
        self.host = host
        self.accept_new_host_key = accept_new_host_key or spec.host_key == "accept-new"
        self.connect_timeout = connect_timeout
        self.ssh_config_path = ssh_config_path
        self.password_env = password_env
        # Bulk copy path: auto (system ssh when it logs in, else channel), or forced (tests, bench).
        self.copy_via = settings.ssh_copy()
        self._conn: Any = None  # fabric Connection, once open
        self._known_hosts: list[Path] = []
        self._home: str | None = None
        self._ssh_client: ssh_copy.SshClientCommand | None = None
        self._ssh_client_checked = False
        self._lock = threading.Lock()

    # --- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (otherwise the first command does); idempotent."""
        self._transport()

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn.transport
            self._close_conn()
            self._conn = self._open()
            return self._conn.transport

    def _config(self) -> Config:
        cfg = Config(lazy=True)  # lazy: skip fabric's own yaml files, load only ssh_config
        if self.ssh_config_path:
            cfg.set_runtime_ssh_path(self.ssh_config_path)
        try:
            cfg.load_ssh_config()
        except OSError as exc:
            raise BadInputError(f"cannot read ssh config {self.ssh_config_path}: {exc.strerror or exc}",
                                "fix --ssh-config, or leave it out to use ~/.ssh/config") from exc
        return cfg

    def _open(self) -> Any:
        password = settings.ssh_password(self.password_env)
        prompted = False
        while True:
            conn = self._make_connection(password)
            started = time.monotonic()
            try:
                conn.open()
            except Exception as exc:
                _close_chain(conn)
                if (isinstance(exc, paramiko.AuthenticationException) and password is None and not prompted
                        and sys.stdin.isatty()):
                    # Interactive use only; never a command-line password.
                    password = getpass.getpass(f"{conn.user}@{conn.host}'s password: ")
                    prompted = True
                    continue
                timed_out = time.monotonic() - started >= self.connect_timeout * 0.9
                raise self._connect_error(exc, conn, timed_out=timed_out) from exc
            conn.transport.set_keepalive(KEEPALIVE_S)
            sock = conn.transport.sock
            if isinstance(sock, socket.socket):  # not a jump host's channel
                # paramiko leaves Nagle on: each short command then waits on delayed ACKs (104 vs 46 ms a command at 20 ms RTT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn

    def _make_connection(self, password: str | None) -> Any:
        kwargs: dict[str, float | str] = {"banner_timeout": self.connect_timeout, "auth_timeout": max(30.0, self.connect_timeout)}
        if password is not None:
            kwargs["password"] = password
        try:
            conn = Connection(self.host, user=self.spec.user, port=self.spec.port, config=self._config(),
                              connect_kwargs=kwargs)
        except ValueError as exc:  # e.g. user both in "user@host" and in the spec
            raise BadInputError(f"{self.display}: {exc}", "give the user and port once") from exc
        if conn.ssh_config.get("identitiesonly", "").lower() == "yes" and conn.ssh_config.get("identityfile"):
            # OpenSSH semantics: only the configured keys, not every key in the agent or ~/.ssh.
            conn.connect_kwargs["allow_agent"] = False
            conn.connect_kwargs["look_for_keys"] = False
        self._known_hosts = self._guard(conn)
        hop = conn.gateway
        while isinstance(hop, Connection):  # every ProxyJump hop gets the same checks
            self._guard(hop)
            hop = hop.gateway
        return conn

    def _guard(self, conn: Any) -> list[Path]:
        """Strict host key checking on one fabric Connection (fabric installs AutoAddPolicy)."""
        files = known_hosts_files(conn.ssh_config.get("userknownhostsfile"), conn.user)
        load_known_hosts(conn.client, files)
        hashed = conn.ssh_config.get("hashknownhosts", "no").lower() == "yes"
        conn.client.set_missing_host_key_policy(
            KnownHostsPolicy(accept_new=self.accept_new_host_key, record_to=files[0], hashed=hashed))
        # fabric rounds a float timeout down to int (0.5 -> 0 -> none at all): set it ourselves.
        conn.connect_timeout = self.connect_timeout
        return files

    def _connect_error(self, exc: BaseException, conn: Any, *, timed_out: bool = False) -> TargetError:
        where = f"{conn.host}:{conn.port}"
        via = f" (via ProxyJump {conn.ssh_config['proxyjump']})" if "proxyjump" in conn.ssh_config else ""
        who = self.display
        if isinstance(exc, TargetError):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            hop = _hop_for(conn, exc.hostname)
            name = host_key_name(exc.hostname, hop.port if hop is not None else conn.port)
            files = known_hosts_files((hop or conn).ssh_config.get("userknownhostsfile"), (hop or conn).user)
            return changed_key_error(name, exc.key, files)
        if isinstance(exc, paramiko.AuthenticationException):
            return TargetError(
                f"{who}: authentication failed for {conn.user}@{where}{via}",
                f"check the user and key (IdentityFile in ssh config, ssh-agent), or put the password in ${self.password_env}",
            )
        if isinstance(exc, socket.gaierror):
            return TargetError(f"{who}: cannot resolve host name {conn.host!r}{via}: {exc.strerror}",
                               "check the host name (or HostName in ssh config) and DNS")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            codes = {e.errno for e in exc.errors.values()}
            if codes == {errno.EHOSTUNREACH}:
                return TargetError(f"{who}: host {conn.host} unreachable{via}", "is the board on and on this network?")
            return TargetError(f"{who}: connection refused by {where}{via}",
                               "is sshd running on the board, and is the port right?")
        # paramiko gives up on a silent server with odd messages ("No existing session"): go by the clock.
        if isinstance(exc, (socket.timeout, TimeoutError)) or (timed_out and isinstance(exc, (OSError, paramiko.SSHException))):
            return TargetError(f"{who}: connection to {where}{via} timed out after {self.connect_timeout:g} s",
                               "is the board on, the address right, and no firewall dropping SSH?")
        if isinstance(exc, paramiko.ChannelException):
            return TargetError(f"{who}: ProxyJump hop could not reach {where}: {exc}",
                               "check HostName/Port of the target as seen from the jump host")
        if isinstance(exc, paramiko.SSHException):
            return TargetError(f"{who}: SSH handshake with {where}{via} failed: {exc}",
                               "is it an SSH server? run ssh -v to see what it says")
        if isinstance(exc, OSError):
            return TargetError(f"{who}: cannot connect to {where}{via}: {exc.strerror or exc}",
                               "check the address and the network")
        return TargetError(f"{who}: cannot connect to {where}{via}: {type(exc).__name__}: {exc}",
                           "run with --debug for details")

    def close(self) -> None:
        with self._lock:
            self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        _close_chain(conn)

    # --- commands ---------------------------------------------------------------------------

    def _exec(self, command: str, timeout: float, stdin: bytes | None, hold_stdin: bool = False) -> tuple[int, bytes, bytes]:
        # Tag the command's environment so a timeout (or a signal here) can find and kill everything
        # it started: sshd refuses 'signal' requests for root logins, and closing the channel kills nothing.
        run_id = secrets.token_hex(8)
        status, out, err = self._run_channel(f"{RUN_ID_VAR}={run_id}; export {RUN_ID_VAR}; {command}", timeout,
                                             stdin, on_timeout=lambda: self._kill_run(run_id), hold_stdin=hold_stdin)
        if status is None:
            raise TimeoutError(command)
        return status, out, err

    def _run_channel(
        self, command: str, timeout: float, stdin: bytes | None, on_timeout: Callable[[], None] | None = None,
        hold_stdin: bool = False,
    ) -> tuple[int | None, bytes, bytes]:
        """Run command on a new session channel; status None when it timed out. hold_stdin: never
        send EOF, so the command's stdin ends only with the channel (with this process, if it dies)."""
        transport = self._transport()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(f"cannot start a command: {exc or type(exc).__name__}") from exc
        writer: threading.Thread | None = None
        if stdin:
            # A thread, so a command that prints before reading all its input cannot deadlock us.
            writer = threading.Thread(target=_feed, args=(chan, stdin), daemon=True)
            writer.start()
        elif not hold_stdin:
            chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                while chan.recv_ready():
                    out += chan.recv(READ_CHUNK)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(READ_CHUNK)
                if len(out) + len(err) > MAX_OUTPUT_BYTES:
                    _signal_remote(chan)
                    if on_timeout is not None:  # the same clean-up as a timeout: kill what it started
                        on_timeout()
                    raise OutputTooLarge(MAX_OUTPUT_BYTES)
                # A closed channel has exit_status_ready() too (-1 when none came): sorted out below.
                if (chan.eof_received or chan.closed) and chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    _signal_remote(chan)
                    if on_timeout is not None:
                        on_timeout()
                    return None, bytes(out), bytes(err)
                # The channel's fileno is readable on stdout/stderr data and on close.
                select.select([chan], [], [], min(left, 0.05))
        except KeyboardInterrupt:  # errors.Interrupted too: a signal here stops the command there
            _signal_remote(chan)
            if on_timeout is not None:
                on_timeout()
            raise
        finally:
            ssh_copy.close_quietly(chan)
            if writer is not None:
                writer.join(1)
        status = int(chan.exit_status)
        if status == -1:
            # No exit status: either the link died (the channel was torn down without an EOF, or the
            # transport is going down), or the command died of a signal (sshd then sends
            # exit-signal, which paramiko ignores).
            if not chan.eof_received or _goes_down(transport):
                raise self._lost("connection lost while a command ran")
            err += b"\n(remote command ended without an exit status: killed by a signal?)\n"
            status = 255
        return status, bytes(out), bytes(err)

    def _kill_run(self, run_id: str) -> None:
        """SIGKILL every process on the target whose environment carries run_id (Linux /proc)."""
        # One grep over all environ files: a per-process loop forks hundreds of times on a slow board.
        script = (f"for f in $(grep -ls '{RUN_ID_VAR}={run_id}' /proc/[0-9]*/environ); do "
                  'p=${f#/proc/}; kill -9 "${p%/environ}" 2>/dev/null; done; exit 0')
        try:
            self._run_channel(script, 30, None)
        except TargetError:
            pass  # best effort: the timeout is what gets reported

    def _lost(self, what: str) -> TargetError:
        with self._lock:
            self._close_conn()  # the next call reconnects
        return TargetError(f"{self.display}: {what}", "check the network and that the board is up; then retry")

    def home(self) -> str:
        if self._home is None:
            self._home = super().home()
        return self._home

    # --- files ------------------------------------------------------------------------------

    def _put(self, local: Path, remote: str, offset: int, progress: ProgressFn | None) -> None:
        try:
            total = local.stat().st_size
        except OSError as exc:
            raise BadInputError(f"cannot read {local}: {exc.strerror or exc}", "check the path") from exc
        if not 0 <= offset <= total:
            raise BadInputError(f"resume offset {offset} is outside {local} ({total} bytes)",
                                "resume from the size of the partial remote file")
        transport = self._transport()
        client = self._system_ssh(total - offset)
        if client is not None:
            ssh_copy.ssh_upload(client, local, remote, offset, total, progress, self.display)
        else:
            ssh_copy.channel_upload(transport, local, remote, offset, total, progress, self.display)

    def _get(self, remote: str, local: Path, progress: ProgressFn | None) -> None:
        result = self.run_shell(ssh_copy.size_command(remote), timeout=60, check=False)
        if not result.ok or not result.stdout.strip().isdigit():
            raise TargetError(f"{self.display}: cannot read {remote}: {result.tail() or 'no such file?'}",
                              "check the remote path")
        total = int(result.stdout.strip())
        client = self._system_ssh(total)
        if client is not None:
            ssh_copy.ssh_download(client, remote, local, total, progress, self.display)
        else:
            ssh_copy.channel_download(self._transport(), remote, local, total, progress, self.display)

    def _system_ssh(self, nbytes: int) -> ssh_copy.SshClientCommand | None:
        """The OpenSSH client command for a copy of nbytes, or None to use the paramiko channel."""
        if self.copy_via not in COPY_VIA:
            raise BadInputError(f"{settings.SSH_COPY} must be one of {', '.join(COPY_VIA)}, not {self.copy_via!r}",
                                "unset it to choose automatically")
        if self.copy_via == "channel" or (self.copy_via == "auto" and nbytes < SYSTEM_SSH_MIN_BYTES):
            return None
        if not self._ssh_client_checked:
            self._ssh_client_checked = True
            binary = ssh_copy.find_ssh()
            conn = self._conn
            if binary is not None and conn is not None:
                cmd = ssh_copy.SshClientCommand(
                    destination=conn.original_host, port=int(conn.port), user=conn.user,
                    config_path=self.ssh_config_path, known_hosts=tuple(self._known_hosts),
                    connect_timeout=self.connect_timeout, ssh=binary)
                ok, why = ssh_copy.probe(cmd)
                if ok:
                    self._ssh_client = cmd
                elif self.copy_via == "ssh":
                    raise TargetError(f"{self.display}: the system ssh client cannot log in: {why}",
                                      f"unset {settings.SSH_COPY} to fall back to the built-in client")
        if self.copy_via == "ssh" and self._ssh_client is None:
            raise TargetError(f"{self.display}: no system ssh client", "install openssh-client")
        return self._ssh_client


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command exited or the link died: the reader reports it


def _signal_remote(chan: paramiko.Channel) -> None:
    """Best effort: ask sshd to SIGKILL the command's process group (RFC 4254 'signal' request).

    OpenSSH honours it for non-root logins only; _kill_run covers the rest.
    """
    try:
        msg = paramiko.Message()
        msg.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
        msg.add_int(chan.remote_chanid)
        msg.add_string("signal")
        msg.add_boolean(False)
        msg.add_string("KILL")
        chan.transport._send_user_message(msg)
    except (OSError, EOFError, paramiko.SSHException, AttributeError):
        pass


def _goes_down(transport: paramiko.Transport, wait_s: float = 0.3) -> bool:
    """True when the transport stops within wait_s (paramiko closes channels before it says so)."""
    deadline = time.monotonic() + wait_s
    while transport.is_active():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _hop_for(conn: Any, hostname: str) -> Any:
    hop = conn
    while isinstance(hop, Connection):
        if hop.host == hostname:
            return hop
        hop = hop.gateway
    return None


def _close_chain(conn: Any) -> None:
    hop = conn
    while isinstance(hop, Connection):
        hop.close()
        hop = hop.gateway
