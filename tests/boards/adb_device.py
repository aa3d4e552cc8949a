"""An emulated Android phone that the real adb client and server talk to over TCP.

It speaks the device side of adb's transport protocol (24-byte CNXN/AUTH/OPEN/OKAY/WRTE/CLSE
messages) and serves `shell:` (raw, exit code lost), `shell,v2,...:` (stdout/stderr/exit
packets), `exec:` and `sync:` (STAT/STA2/LST2/LIST/SEND/RECV/QUIT). Shell commands run on this
machine inside the board overlay (tests/boards/overlay.py: private mount namespace, overlay
/proc files, getprop first on PATH). /data/local/tmp maps to a per-device temp directory: sync
paths are rewritten, shell command lines get the same prefix rewrite and run with cwd, HOME and
TMPDIR there.

    python -m tests.boards.adb_device --board tests/boards/pixel8 [--port N] [--no-shell-v2
        [--legacy-pty]] [--state unauthorized|offline] [--sync-rate BYTES_PER_S]
    adb connect 127.0.0.1:N && adb -s 127.0.0.1:N shell getprop ro.product.model

Protocol notes (verified against Debian's adb 29.0.6):
- Every message is <command, arg0, arg1, data_length, data_check, magic> as little-endian u32,
  magic = command ^ 0xffffffff. data_check is the byte sum; hosts at version >= 0x01000001
  ignore it, but older ones verify it, so we always fill it in.
- CNXN(version, max_payload, "host::features=..."): we answer with min() of both values and a
  "device::ro.product.name=...;ro.product.model=...;ro.product.device=...;features=..." banner.
  Answering CNXN directly skips AUTH. A device that sends AUTH(TOKEN) instead, rejects the
  signature (another TOKEN) and ignores the public key is listed as "unauthorized" (`adb
  connect` prints "failed to authenticate to ..."). One that never answers CNXN is listed as
  "offline" at once, while `adb connect` waits 10 s and prints "failed to connect to ...".
  Either way `adb connect` exits 0.
- Streams: host OPEN(host_id, 0, "service\\0") -> OKAY(our_id, host_id) or CLSE(0, host_id) to
  refuse. Each WRTE must be acknowledged by one OKAY before the next WRTE in that direction
  (adb 29 has no delayed-ack feature unless both sides advertise it; we do not). We hold
  the OKAY back while the service has a backlog, as adbd's socketpair does.
- The pre-v2 `shell:` service gets the client's stdin but never its end (no close-stdin
  packet), so `echo x | adb shell cat` hangs on such devices; shell v2 sends id 4.
- Shell protocol v2 packets: 1-byte id (0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close stdin,
  5 window size) + u32 length + data. Packets can span or share WRTE payloads.
- sync: requests are 4-byte id + u32 length + path, also free-floating across WRTEs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import posixpath
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Self

from tests.boards.overlay import namespace_argv as overlay_namespace_argv

# --- wire constants (system/core/adb/adb.h, file_sync_service.h, shell_protocol.h) -------------

A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257

A_VERSION_MIN = 0x01000000
A_VERSION = 0x01000001  # skip-checksum version; what adb 29 and every modern adbd send
MAX_PAYLOAD = 1024 * 1024
MAX_PAYLOAD_V1 = 4096

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3

SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW = range(6)

SYNC_DATA_MAX = 64 * 1024
RECV_WINDOW = 256 * 1024  # host data buffered per stream before its WRTEs wait for an OKAY
HEADER = struct.Struct("<6I")
SYNC_REQ = struct.Struct("<4sI")
STAT_V1 = struct.Struct("<4sIII")
STAT_V2 = struct.Struct("<4sIQQIIIIQqqq")
DENT_V1 = struct.Struct("<4sIIII")

DEVICE_TMP = "/data/local/tmp"
# No ls_v2: we do not implement LIS2/DNT2, and without it adb falls back to LIST.
FEATURES = ["shell_v2", "cmd", "stat_v2", "fixed_push_mkdir", "apex", "fixed_push_symlink_timestamp"]
STATES = ("device", "unauthorized", "offline")
SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NamespaceArgv = Callable[[Path, list[str]], list[str]]


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


class _Stream:
    """One OPENed service: buffered input from the host, flow-controlled output to it."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._closed = False  # by the host, by us, or because the connection died
        self._can_send = True  # the OKAY for our previous WRTE has arrived
        self._owed_okay = False  # the host's last WRTE is not acknowledged yet
        self._write_lock = threading.Lock()

    # called from the connection's reader thread
    def feed(self, data: bytes) -> None:
        """Buffer a host WRTE; acknowledge it now, or once the service has read most of it.

        Deferring the OKAY is adbd's backpressure (its socketpair to the service fills up):
        without it a push would look finished to the host while the service still writes.
        """
        with self._cond:
            self._buf += data
            self._cond.notify_all()
            owe = len(self._buf) > RECV_WINDOW
            self._owed_okay = owe
        if not owe:
            self.conn.send(A_OKAY, self.local_id, self.remote_id)

    def _consumed(self) -> None:
        with self._cond:
            pay = self._owed_okay and len(self._buf) <= RECV_WINDOW and not self._closed
            if pay:
                self._owed_okay = False
        if pay:
            self.conn.send(A_OKAY, self.local_id, self.remote_id)

    def acked(self) -> None:
        with self._cond:
            self._can_send = True
            self._cond.notify_all()

    def hangup(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # called from the service thread
    def read(self) -> bytes:
        """Whatever has arrived; b"" once the stream is closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._buf or self._closed)
            data = bytes(self._buf)
            self._buf.clear()
        self._consumed()
        return data

    def read_exact(self, n: int) -> bytes | None:
        with self._cond:
            self._cond.wait_for(lambda: len(self._buf) >= n or self._closed)
            if len(self._buf) < n:
                return None
            data = bytes(self._buf[:n])
            del self._buf[:n]
        self._consumed()
        return data

    def write(self, data: bytes) -> bool:
        """Send data in WRTEs of at most max_payload, each after the previous one's OKAY."""
        with self._write_lock:
            view = memoryview(data)
            step = self.conn.max_payload
            for start in range(0, len(view), step):
                with self._cond:
                    self._cond.wait_for(lambda: self._can_send or self._closed)
                    if self._closed:
                        return False
                    self._can_send = False
                if not self.conn.send(A_WRTE, self.local_id, self.remote_id, bytes(view[start : start + step])):
                    return False
        return True

    def close(self) -> None:
        with self._cond:
            was_closed = self._closed
            self._closed = True
            self._cond.notify_all()
        self.conn.forget(self.local_id)
        if not was_closed:
            self.conn.send(A_CLSE, self.local_id, self.remote_id)


class _Connection:
    """One TCP connection from an adb server: the reader loop and message dispatch."""

    def __init__(self, device: AdbDevice, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        self.max_payload = MAX_PAYLOAD_V1
        self.online = False
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._next_id = 1

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> bool:
        header = HEADER.pack(command, arg0, arg1, len(data), _checksum(data), command ^ 0xFFFFFFFF)
        try:
            with self._send_lock:
                self.sock.sendall(header + data)
        except OSError:
            return False
        return True

    def forget(self, local_id: int) -> None:
        with self._streams_lock:
            self._streams.pop(local_id, None)

    def _recv_exact(self, n: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = self.sock.recv(n - len(chunks))
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def serve(self) -> None:
        try:
            while True:
                header = self._recv_exact(HEADER.size)
                if header is None:
                    break
                command, arg0, arg1, length, _check, magic = HEADER.unpack(header)
                if magic != command ^ 0xFFFFFFFF or length > MAX_PAYLOAD:
                    break  # garbage: a real adbd drops the connection too
                data = self._recv_exact(length) if length else b""
                if data is None:
                    break
                self._dispatch(command, arg0, arg1, data)
        except OSError:
            pass
        finally:
            with self._streams_lock:
                streams = list(self._streams.values())
                self._streams.clear()
            for stream in streams:
                stream.hangup()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.device._forget_connection(self)

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        state = self.device.state
        if command == A_CNXN:
            if state == "device":
                # Version and payload are the minimum of what both sides support.
                version = max(A_VERSION_MIN, min(arg0, A_VERSION))
                self.max_payload = max(MAX_PAYLOAD_V1, min(arg1, MAX_PAYLOAD))
                self.online = True
                self.send(A_CNXN, version, self.max_payload, self.device.banner().encode())
            elif state == "unauthorized":
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            # offline: never answer, so the server keeps the transport in "offline".
        elif command == A_AUTH:
            if state == "unauthorized" and arg0 == AUTH_SIGNATURE:
                # Reject every signature; the host then offers its public key, which the
                # "user" never accepts, so the device stays unauthorized.
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
        elif not self.online:
            return
        elif command == A_OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
        elif command == A_WRTE:
            stream = self._stream(arg1)
            if stream is None:
                self.send(A_CLSE, 0, arg0)
                return
            stream.feed(data)  # sends the OKAY, possibly later
        elif command == A_OKAY:
            stream = self._stream(arg1)
            if stream is not None:
                stream.acked()
        elif command == A_CLSE:
            with self._streams_lock:
                stream = self._streams.pop(arg1, None)
            if stream is not None:
                stream.hangup()

    def _stream(self, local_id: int) -> _Stream | None:
        with self._streams_lock:
            return self._streams.get(local_id)

    def _open(self, remote_id: int, service: str) -> None:
        handler = self.device.service(service)
        if handler is None:
            self.send(A_CLSE, 0, remote_id)
            return
        with self._streams_lock:
            local_id = self._next_id
            self._next_id += 1
            stream = _Stream(self, local_id, remote_id)
            self._streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)
        threading.Thread(target=self._run_service, args=(handler, stream), daemon=True).start()

    @staticmethod
    def _run_service(handler: Callable[[_Stream], None], stream: _Stream) -> None:
        try:
            handler(stream)
        finally:
            stream.close()


class AdbDevice:
    """The emulated phone: a TCP listener plus the services behind it."""

    def __init__(
        self,
        board: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        shell_v2: bool = True,
        legacy_pty: bool = False,
        state: str = "device",
        data_dir: Path | None = None,
        sync_bytes_per_s: float | None = None,
        namespace_argv: NamespaceArgv | None = None,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        self.board = board.resolve()
        self.shell_v2 = shell_v2
        self.legacy_pty = legacy_pty
        self.state = state
        self._own_data_dir = data_dir is None
        self.data_dir = (data_dir or Path(tempfile.mkdtemp(prefix="adb-device-"))).resolve()
        self._namespace_argv = namespace_argv or overlay_namespace_argv
        self._listener = socket.create_server((host, port))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._banner: str | None = None
        # A slow USB link for push/pull, so that the host sees transfers in progress.
        self.sync_bytes_per_s = sync_bytes_per_s
        self._thread: threading.Thread | None = None

    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    # --- lifecycle ---

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._accept_loop, name=f"adb-device-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _addr = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def _forget_connection(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    # --- identity ---

    def getprop(self, name: str, default: str) -> str:
        """Ask the overlay's own getprop, so the banner matches what the shell reports."""
        tool = self.board / "bin" / "getprop"
        if not tool.is_file():
            return default
        try:
            out = subprocess.run([str(tool), name], capture_output=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return default
        return out.decode("utf-8", "replace").strip() or default

    def banner(self) -> str:
        if self._banner is None:
            features = [f for f in FEATURES if self.shell_v2 or f != "shell_v2"]
            props = [
                f"ro.product.name={self.getprop('ro.product.name', 'emulated')}",
                f"ro.product.model={self.getprop('ro.product.model', 'Emulated')}",
                f"ro.product.device={self.getprop('ro.product.device', 'emulated')}",
            ]
            self._banner = "device::" + ";".join(props) + ";features=" + ",".join(features)
        return self._banner

    # --- services ---

    def service(self, name: str) -> Callable[[_Stream], None] | None:
        if name.startswith("shell"):
            head, sep, command = name.partition(":")
            args = head.split(",")
            if not sep or args[0] != "shell":
                return None
            v2 = "v2" in args[1:]
            if v2 and not self.shell_v2:
                return None  # an old adbd does not know this service at all
            return lambda stream: self._shell(stream, command, v2=v2)
        if name.startswith("exec:"):
            command = name[len("exec:") :]
            return lambda stream: self._shell(stream, command, v2=False, merge_stderr=False)
        if name == "sync:":
            return self._sync
        return None

    def map_path(self, path: str) -> Path:
        """Device path -> path on this machine: /data/local/tmp is ours, /proc etc. the board's."""
        norm = posixpath.normpath("/" + path.lstrip("/"))
        if norm == DEVICE_TMP or norm.startswith(DEVICE_TMP + "/"):
            return self.data_dir / norm[len(DEVICE_TMP) :].lstrip("/")
        overlay = self.board / "root" / norm.lstrip("/")
        if overlay.is_file():
            return overlay
        return Path(norm)

    def _writable(self, path: str) -> bool:
        norm = posixpath.normpath("/" + path.lstrip("/"))
        return norm.startswith(DEVICE_TMP + "/")

    def shell_argv(self, command: str) -> list[str]:
        command = command.replace(DEVICE_TMP, str(self.data_dir))
        inner = ["/bin/sh", "-c", command] if command else ["/bin/sh"]
        return self._namespace_argv(self.board, inner)

    def _shell(self, stream: _Stream, command: str, *, v2: bool, merge_stderr: bool = True) -> None:
        env = {"PATH": SHELL_PATH, "HOME": str(self.data_dir), "TMPDIR": str(self.data_dir), "USER": "shell"}
        try:
            proc = subprocess.Popen(
                self.shell_argv(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # Raw shell: one stream, like a pre-v2 adbd. exec: has no stderr at all.
                stderr=subprocess.PIPE if v2 else (subprocess.STDOUT if merge_stderr else subprocess.DEVNULL),
                cwd=self.data_dir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            message = f"/system/bin/sh: {exc}\n".encode()
            if v2:
                stream.write(_shell_packet(SHELL_STDERR, message) + _shell_packet(SHELL_EXIT, b"\x7f"))
            else:
                stream.write(message)
            return
        assert proc.stdin is not None and proc.stdout is not None
        # A pre-7 adbd ran every "shell:" command on a PTY, whose ONLCR turns LF into CRLF.
        onlcr = self.legacy_pty and not v2 and merge_stderr
        out_args = (proc.stdout, stream, SHELL_STDOUT if v2 else None, onlcr)
        pumps = [threading.Thread(target=self._pump, args=out_args)]
        if v2 and proc.stderr is not None:
            pumps.append(threading.Thread(target=self._pump, args=(proc.stderr, stream, SHELL_STDERR)))
        feeder = threading.Thread(target=self._feed_stdin, args=(stream, proc, v2), daemon=True)
        for t in pumps:
            t.start()
        feeder.start()
        for t in pumps:
            t.join()
        code = proc.wait()
        if code < 0:  # killed by a signal: report it the way sh does
            code = 128 - code
        if v2:
            stream.write(_shell_packet(SHELL_EXIT, bytes([code & 0xFF])))

    @staticmethod
    def _pump(pipe: IO[bytes], stream: _Stream, packet_id: int | None, onlcr: bool = False) -> None:
        fd = pipe.fileno()
        try:
            while chunk := os.read(fd, SYNC_DATA_MAX):
                if onlcr:
                    chunk = chunk.replace(b"\n", b"\r\n")
                data = chunk if packet_id is None else _shell_packet(packet_id, chunk)
                if not stream.write(data):
                    break
        finally:
            pipe.close()

    @staticmethod
    def _feed_stdin(stream: _Stream, proc: subprocess.Popen[bytes], v2: bool) -> None:
        stdin = proc.stdin
        assert stdin is not None
        try:
            while True:
                if v2:
                    header = stream.read_exact(5)
                    if header is None:
                        break
                    packet_id, length = header[0], struct.unpack("<I", header[1:])[0]
                    data = stream.read_exact(length) if length else b""
                    if data is None:
                        break
                    if packet_id == SHELL_STDIN and data:
                        with contextlib.suppress(OSError):
                            stdin.write(data)
                            stdin.flush()
                    elif packet_id == SHELL_CLOSE_STDIN:
                        with contextlib.suppress(OSError):
                            stdin.close()
                else:
                    data = stream.read()
                    if not data:
                        break
                    with contextlib.suppress(OSError):
                        stdin.write(data)
                        stdin.flush()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()
        # The stream is gone (host hung up, e.g. the adb client was killed on a timeout, or we
        # closed it after the exit packet): like adbd, kill whatever still runs.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    # --- sync ---

    def _sync(self, stream: _Stream) -> None:
        while True:
            request = stream.read_exact(SYNC_REQ.size)
            if request is None:
                return
            sid, length = SYNC_REQ.unpack(request)
            if sid == b"QUIT":
                return
            if length > 4096:
                _sync_fail(stream, "path too long")
                return
            raw = stream.read_exact(length) if length else b""
            if raw is None:
                return
            path = raw.decode("utf-8", "surrogateescape")
            if sid == b"STAT":
                stream.write(self._stat_v1(path))
            elif sid in (b"STA2", b"LST2"):
                stream.write(self._stat_v2(path, follow=sid == b"STA2"))
            elif sid == b"LIST":
                self._list(stream, path)
            elif sid == b"SEND":
                if not self._recv_file(stream, path):
                    return
            elif sid == b"RECV":
                self._send_file(stream, path)
            else:
                _sync_fail(stream, f"unknown sync request {sid!r}")
                return

    def _stat_v1(self, path: str) -> bytes:
        try:
            st = os.lstat(self.map_path(path))
        except OSError:
            return STAT_V1.pack(b"STAT", 0, 0, 0)
        return STAT_V1.pack(b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF)

    def _stat_v2(self, path: str, *, follow: bool) -> bytes:
        sid = b"STA2" if follow else b"LST2"
        try:
            st = os.stat(self.map_path(path), follow_symlinks=follow)
        except OSError as exc:
            return STAT_V2.pack(sid, exc.errno or 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return STAT_V2.pack(
            sid, 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime),
        )

    def _list(self, stream: _Stream, path: str) -> None:
        local = self.map_path(path)
        out = bytearray()
        with contextlib.suppress(OSError):
            for name in [".", "..", *sorted(os.listdir(local))]:
                try:
                    st = os.lstat(local / name)
                except OSError:
                    continue
                encoded = name.encode("utf-8", "surrogateescape")
                out += DENT_V1.pack(b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(encoded))
                out += encoded
        out += DENT_V1.pack(b"DONE", 0, 0, 0, 0)
        stream.write(bytes(out))

    def _recv_file(self, stream: _Stream, spec: str) -> bool:
        """SEND "path,mode" then DATA* DONE(mtime): always drain to DONE, then OKAY or FAIL."""
        path, _, mode_text = spec.rpartition(",")
        try:
            mode = int(mode_text)
        except ValueError:
            path, mode = spec, 0o100644
        error = None if self._writable(path) else f"couldn't create file: Permission denied ({path})"
        target = self.map_path(path)
        tmp = target.with_name(f".{target.name}.adb-partial")
        out = None
        if error is None:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)  # fixed_push_mkdir
                out = tmp.open("wb")
            except OSError as exc:
                error = f"couldn't create file: {exc.strerror}"
        mtime = 0
        try:
            while True:
                header = stream.read_exact(SYNC_REQ.size)
                if header is None:
                    return False
                sid, length = SYNC_REQ.unpack(header)
                if sid == b"DONE":
                    mtime = length
                    break
                if sid != b"DATA" or length > SYNC_DATA_MAX:
                    _sync_fail(stream, f"invalid data message {sid!r}")
                    return False
                data = stream.read_exact(length)
                if data is None:
                    return False
                if out is not None and error is None:
                    try:
                        out.write(data)
                        self._throttle(len(data))
                    except OSError as exc:
                        error = f"write failed: {exc.strerror}"
        finally:
            if out is not None:
                out.close()
        if error is None:
            try:
                if stat.S_ISLNK(mode):
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
                    os.symlink(tmp.read_bytes(), target)
                    tmp.unlink()
                else:
                    os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
                    os.utime(tmp, (mtime, mtime))
                    os.replace(tmp, target)
            except OSError as exc:
                error = f"couldn't finish file: {exc.strerror}"
        if error is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
            _sync_fail(stream, error)
            return True
        return stream.write(SYNC_REQ.pack(b"OKAY", 0))

    def _throttle(self, nbytes: int) -> None:
        if self.sync_bytes_per_s:
            time.sleep(nbytes / self.sync_bytes_per_s)

    def _send_file(self, stream: _Stream, path: str) -> None:
        try:
            fin = self.map_path(path).open("rb")
        except OSError as exc:
            _sync_fail(stream, exc.strerror or str(exc))
            return
        with fin:
            while chunk := fin.read(SYNC_DATA_MAX):
                if not stream.write(SYNC_REQ.pack(b"DATA", len(chunk)) + chunk):
                    return
                self._throttle(len(chunk))
        stream.write(SYNC_REQ.pack(b"DONE", 0))


def _shell_packet(packet_id: int, data: bytes) -> bytes:
    return struct.pack("<BI", packet_id, len(data)) + data


def _sync_fail(stream: _Stream, message: str) -> None:
    encoded = message.encode()
    stream.write(SYNC_REQ.pack(b"FAIL", len(encoded)) + encoded)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.boards.adb_device", description=__doc__.split("\n")[0])
    parser.add_argument("--board", type=Path, required=True, help="board overlay directory (root/, bin/)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--no-shell-v2", action="store_true", help="omit shell_v2: exit codes are not passed")
    parser.add_argument("--legacy-pty", action="store_true", help="with --no-shell-v2: LF -> CRLF like a pre-7 PTY")
    parser.add_argument("--state", choices=STATES, default="device", help="simulate an unauthorized/offline phone")
    parser.add_argument("--data-dir", type=Path, help="directory behind /data/local/tmp (default: a temp dir)")
    parser.add_argument("--sync-rate", type=float, help="limit push/pull to this many bytes/s (a slow link)")
    args = parser.parse_args(argv)
    if not args.board.is_dir():
        parser.error(f"no such board directory: {args.board}")
    device = AdbDevice(
        args.board,
        host=args.host,
        port=args.port,
        shell_v2=not args.no_shell_v2,
        legacy_pty=args.legacy_pty,
        state=args.state,
        data_dir=args.data_dir,
        sync_bytes_per_s=args.sync_rate,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with device:
        # First line is machine-readable: scripts read the port from it.
        print(f"listening on {device.serial} (state {device.state}, /data/local/tmp -> {device.data_dir})", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
