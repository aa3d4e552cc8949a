"""A board reached only through its serial console: a login shell driven over one UART byte stream.

The console is a single stream shared by the shell's stdout and stderr, the tty's echo and the
kernel's printk, so every command is framed by random begin/end markers and the exit status
travels in the end marker. What arrives is cleaned before parsing: \\r dropped, kernel log
lines (`[  123.456789] ...`) cut out wherever they land, ANSI/VT100 sequences stripped.

Nothing reaches the command on the console's stdin: stdin, scripts and over-long or non-ASCII
command lines are first written to a temporary file on the board (base64 in short lines, which a
canonical-mode tty passes untouched), then run from there. Files move the same way, chunked, with
a sha256 check on both ends; a file above `max_file_bytes` is refused with the time it would take.

Not thread-safe: one command at a time, as on the console itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
import shlex
import time
from pathlib import Path

import serial  # type: ignore[import-untyped,unused-ignore]  # pyserial ships no stubs

from toolchain.core import settings
from toolchain.core.errors import CommandTimeout, TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.transports.base import Capabilities, CommandResult, ProgressFn, Transport

DEFAULT_BAUD = 115200
DEFAULT_MAX_FILE_BYTES = 256 * 1024
USER_ENV = settings.SERIAL_USER
PASSWORD_ENV = settings.SERIAL_PASSWORD
OPEN_HINT = (
    "check the device path, permissions (add yourself to the dialout group), and that no other program (screen, minicom, picocom, ModemManager) holds it"
)
NETWORK_HINT = "add a network transport (ssh: or adb:) for this target in its targets/*.yaml"

CHUNK_BYTES = 6 * 1024  # raw bytes per transfer round trip: bounds tty buffers and gives progress
B64_LINE = 76
MAX_INLINE_COMMAND = 1500  # longer lines go through a file: a canonical tty line holds 4095 bytes
QUIET_S = 0.2  # a prompt counts once the console has been quiet this long after it
READ_SLICE_S = 0.05

# printk prefixes its lines with "[seconds.micros] "; they can land mid-line, so cut them anywhere.
_KERNEL_LINE = re.compile(rb"\[ *\d+\.\d+\] [^\n]*\n")
_ANSI = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, bracketed-paste toggles
    rb"|\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles
    rb"|[()*+][0-9A-Za-z]"  # character set selection
    rb"|[ -/]*[0-~])"  # other two-byte escapes (ESC =, ESC 7, ...)
)
_LOGIN_PROMPT = re.compile(rb"(?i)(?<!last )\blogin: *$")
_PASSWORD_PROMPT = re.compile(rb"(?i)password: *$")
_SHELL_PROMPT = re.compile(rb"[$#%>] *$")
_LOGIN_FAILED = re.compile(rb"(?i)login incorrect|authentication fail|permission denied")
_SHA256 = re.compile(rb"\b([0-9a-f]{64})\b")

# Shell setup after login: quiet (no echo, no prompts, no line editing, no history), C locale,
# and a dumb terminal so programs do not colour or redraw. Each part tolerates shells lacking it.
_SETUP = (
    "stty -echo 2>/dev/null; _edgedeploy_ps1=${_edgedeploy_ps1-$PS1}; PS1=''; PS2=''; PROMPT=''; RPROMPT=''; "
    "export LANG=C LC_ALL=C TERM=dumb; unset PROMPT_COMMAND HISTFILE 2>/dev/null; "
    "set +o vi 2>/dev/null; set +o emacs 2>/dev/null; set +o history 2>/dev/null; set +H 2>/dev/null"
)
_TOOLS = ("base64", "sha256sum", "openssl", "python3", "cksum", "od", "dd")


def clean(data: bytes) -> bytes:
    """Console bytes as a program wrote them: no \\r, no kernel log lines, no escape sequences."""
    data = data.replace(b"\r", b"")
    data = _KERNEL_LINE.sub(b"", data)
    return _ANSI.sub(b"", data).replace(b"\x07", b"")


def transfer_seconds(size_bytes: int, baud: int) -> float:
    """Time to move size_bytes as base64 (4/3) at baud/10 bytes per second (8N1 framing)."""
    return size_bytes * 4 / 3 / (baud / 10)


class _Screen:
    """The cleaned console text. Cleaning works on whole lines, so a kernel line injected into
    the middle of a line is cut out once its own newline has arrived."""

    def __init__(self) -> None:
        self.text = bytearray()
        self._partial = b""

    def feed(self, data: bytes) -> None:
        self._partial += data
        cut = self._partial.rfind(b"\n")
        if cut >= 0:
            self.text += clean(self._partial[: cut + 1])
            self._partial = self._partial[cut + 1 :]

    def tail(self, n: int = 4096) -> bytes:
        return bytes(self.text[-n:]) + clean(self._partial)

    def last_line(self) -> str:
        lines = self.tail().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""


class SerialTransport(Transport):
    """A shell on a board's serial console (TargetSpec kind "serial")."""

    capabilities = Capabilities(file_transfer=True, max_file_bytes=DEFAULT_MAX_FILE_BYTES, separate_stderr=False, resumable_put=False,
                                concurrent_commands=False)

    def __init__(
        self,
        spec: TargetSpec,
        *,
        login_user: str | None = None,
        login_password: str | None = None,
        timeout: float = 10.0,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        if not spec.device:
            raise TargetError(
                f"target {spec.name!r} is a serial target without a device",
                "set device: (e.g. /dev/ttyUSB0) in its targets/*.yaml",
            )
        self.device = spec.device
        self.baud = spec.baud or DEFAULT_BAUD
        super().__init__(spec.name or f"serial:{self.device}@{self.baud}")
        self.capabilities = Capabilities(file_transfer=True, max_file_bytes=max_file_bytes, separate_stderr=False, resumable_put=False)
        self.timeout = timeout
        self.max_file_bytes = max_file_bytes
        # Credentials: explicit, then the target definition, then the environment; never argv.
        self._user = login_user or spec.login_user or settings.serial_user()
        self._password: str | None
        if login_password is not None:
            self._password, self._password_source = login_password, "the login_password argument"
        elif spec.login_password_env and spec.login_password_env in os.environ:
            self._password, self._password_source = os.environ[spec.login_password_env], f"${spec.login_password_env}"
        else:
            self._password, self._password_source = settings.serial_password(), f"${PASSWORD_ENV}"
        missing = spec.login_password_env and spec.login_password_env not in os.environ
        self._password_env_missing = spec.login_password_env if missing else None
        self._port: serial.Serial | None = None
        self._ready = False
        self._logged_in = False
        self.tools: set[str] = set()
        self.tmpdir = "/tmp"
        self._open()
        try:
            self._connect()
        except BaseException:
            self._close_port()
            raise

    # --- connection ---

    def _open(self) -> None:
        try:
            self._port = serial.serial_for_url(self.device, baudrate=self.baud, timeout=READ_SLICE_S, write_timeout=self.timeout, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TargetError(f"{self.display}: cannot open serial device {self.device}: {exc}", OPEN_HINT) from exc

    def _connect(self) -> None:
        """Wake the console, log in if it asks, then make the shell fit for machine use."""
        self._login()
        self._write(_SETUP.encode() + b"\n")
        try:
            self._sync(self.timeout)
        except TimeoutError:
            raise TargetError(
                f"{self.display}: no shell answered on {self.device} (the console shows: {self._screen_tail()!r})",
                "the board may be in its bootloader or still booting; check it with a terminal program (picocom, screen) and the baud rate",
            ) from None
        self._ready = True
        found = self._must(
            f'for c in {" ".join(_TOOLS)}; do command -v "$c" >/dev/null 2>&1 && printf \'%s\\n\' "$c"; done; printf \'tmp=%s\\n\' "${{TMPDIR:-/tmp}}"',
            self.timeout,
            "looking for base64, sha256sum and dd",
        )[1].decode("utf-8", "replace")
        for line in found.splitlines():
            if line.startswith("tmp="):
                self.tmpdir = line[4:].rstrip("/") or "/"
            elif line.strip() in _TOOLS:
                self.tools.add(line.strip())

    def _login(self) -> None:
        self._drain()
        self._screen = _Screen()
        sent_user = sent_password = probed = False
        wakes = 0
        self._write(b"\n")
        deadline = time.monotonic() + 3 * self.timeout
        while time.monotonic() < deadline:
            # A getty answers a newline at once; login itself may take seconds (PAM, motd scripts).
            answering = sent_user or sent_password
            kind = self._await_prompt(self.timeout if answering or wakes >= 2 else 1.0)
            if kind is None:
                if answering:
                    break
                if not probed:
                    # A shell set up by an earlier session shows no prompt and no echo: ask it.
                    probed = True
                    try:
                        self._sync(2.0)
                        return
                    except TimeoutError:
                        pass
                wakes += 1
                if wakes > 3:
                    break
                # Ctrl-C clears a half-typed line (or a program holding the console), then wake.
                self._write(b"\x03\n" if wakes >= 2 else b"\n")
                continue
            if kind == "login" and sent_password:
                said = _LOGIN_FAILED.search(self._screen.tail())
                raise TargetError(
                    f"{self.display}: login as {self._user!r} on {self.device} failed"
                    f" (the console says: {said.group(0).decode() if said else self._screen.last_line()!r})",
                    f"check login_user in the target's targets/*.yaml and the password in {self._password_source}",
                )
            if kind == "login":
                if not self._user:
                    raise TargetError(
                        f"{self.display}: the console on {self.device} asks for a login and no user is configured",
                        f"set login_user: in the target's targets/*.yaml, or export {USER_ENV}",
                    )
                self._send_and_reset(self._user)
                sent_user = True
            elif kind == "password":
                if not sent_user:  # our probe line was taken for a user name: fail it, start over
                    self._send_and_reset("")
                    continue
                if self._password is None:
                    where = (
                        f"${self._password_env_missing} (named by login_password_env) is not set"
                        if self._password_env_missing
                        else f"set login_password_env: in the target's targets/*.yaml, or export {PASSWORD_ENV}"
                    )
                    raise TargetError(f"{self.display}: the console asks for a password and none is configured", where)
                self._send_and_reset(self._password)
                sent_password = True
            else:  # shell prompt
                self._logged_in = sent_password or sent_user
                return
        raise TargetError(
            f"{self.display}: no login prompt or shell on {self.device}"
            + (f" after logging in as {self._user!r}" if sent_user else "")
            + f" (the console shows: {self._screen_tail()!r})",
            f"check that {self.device} is the board's console and that it runs at {self.baud} baud; a board still booting shows its prompt later",
        )

    def _send_and_reset(self, text: str) -> None:
        self._screen = _Screen()
        self._write(text.encode() + b"\n")

    def _await_prompt(self, limit: float) -> str | None:
        """Read until the console's last line is a prompt and nothing more has come for QUIET_S."""
        end = time.monotonic() + limit
        changed = time.monotonic()
        while True:
            tail = self._screen.tail()
            kind = _prompt_kind(tail)
            now = time.monotonic()
            if kind and now - changed >= QUIET_S:
                return kind
            if now >= end:
                return None
            data = self._read()
            if data:
                self._screen.feed(data)
                if self._screen.tail() != tail:  # a kernel line that came and went changes nothing
                    changed = time.monotonic()

    # --- framed commands ---

    def _sync(self, timeout: float) -> None:
        """Run a bare marker echo and wait for it: the shell is listening and the stream is aligned."""
        tok = secrets.token_hex(8)
        self._screen = _Screen()
        self._write(f"\nprintf '%s%s\\n' EDS_ {tok}\n".encode())
        self._wait_for(re.compile(b"EDS_" + tok.encode() + b"\n"), time.monotonic() + timeout)

    def _framed(self, inner: str, timeout: float, heredoc: str = "") -> tuple[int, bytes]:
        """Run one shell command line between markers; return (exit status, merged output).

        The markers are printed from split printf arguments, so the echoed command line never
        contains them; the output runs through `| cat` so programs see a pipe, not a tty, as over ssh.
        """
        with self._one_at_a_time:  # one conversation on the stream at a time (the lock heartbeat is another thread)
            return self._framed_locked(inner, timeout, heredoc)

    def _framed_locked(self, inner: str, timeout: float, heredoc: str) -> tuple[int, bytes]:
        if not self._ready:
            self._connect()
        tok = secrets.token_hex(8)
        line = f"printf '\\n%s%s\\n' EDB_ {tok}; ( exec 2>&1; {inner}\n{heredoc}printf '\\n%s%s:%s\\n' EDE_ {tok} \"$?\" ) | cat\n"
        self._drain()
        self._screen = _Screen()
        self._write(line.encode())
        try:
            end = self._wait_for(re.compile(b"EDE_" + tok.encode() + rb":(\d+)\n"), time.monotonic() + timeout)
        except (TimeoutError, KeyboardInterrupt):  # KeyboardInterrupt: errors.Interrupted too (a signal here)
            with contextlib.suppress(TargetError, OSError, TimeoutError):
                self._recover()  # Ctrl-C on the console stops the command
            raise
        text = bytes(self._screen.text)
        begin = text.rfind(b"EDB_" + tok.encode() + b"\n", 0, end.start())
        if begin < 0:
            raise TargetError(
                f"{self.display}: lost the command framing on {self.device}",
                "bytes were dropped on the serial line; check the cable and baud rate, or lower the baud",
            )
        out = text[begin + len(tok) + 5 : end.start()]
        return int(end.group(1)), out[:-1] if out.endswith(b"\n") else out

    def _wait_for(self, pattern: re.Pattern[bytes], deadline: float) -> re.Match[bytes]:
        searched = 0
        while True:
            m = pattern.search(self._screen.text, max(0, searched - 64))
            if m:
                return m
            searched = len(self._screen.text)
            if time.monotonic() >= deadline:
                raise TimeoutError
            data = self._read()
            if data:
                self._screen.feed(data)

    def _recover(self) -> None:
        """After a timeout: interrupt the command and realign on a fresh marker."""
        for attempt in range(3):
            self._write(b"\x03")
            try:
                self._sync(1.0 + attempt)
                return
            except TimeoutError:
                continue
        self._ready = False  # the next command logs in again if it can
        raise TargetError(
            f"{self.display}: the serial console did not come back after interrupting a timed-out command",
            "the command may ignore Ctrl-C; wait for it or reset the board, then retry",
        )

    # --- Transport primitives ---

    def _exec(self, command: str, timeout: float, stdin: bytes | None, hold_stdin: bool = False) -> tuple[int, bytes, bytes]:
        # hold_stdin cannot be honoured: the console outlives this process, so a command on it never
        # learns that the host died (the next ship stops what is left: deploy/run.py leftover_runners).
        temps: list[str] = []
        try:
            if len(command) > MAX_INLINE_COMMAND or not _tty_safe(command):
                # Control bytes would act on the tty (Ctrl-C, Ctrl-D...), long lines overflow it.
                temps.append(self._upload_temp(command.encode()))
                run = f"sh {shlex.quote(temps[-1])}"
            else:
                run = f"sh -c {shlex.quote(command)}"
            if stdin is not None:
                temps.append(self._upload_temp(stdin))
                run += f" < {shlex.quote(temps[-1])}"
            else:  # never the console itself: a command reading stdin would eat our next lines
                run += " </dev/null"
            status, out = self._framed(run, timeout)
            return status, out, b""
        finally:
            self._remove(temps)

    def run_script(self, script: str, *, timeout: float = 60.0, check: bool = True) -> CommandResult:
        """Run a POSIX sh script from a temporary file: the console has no separate stdin to feed."""
        path = self._upload_temp(script.encode())
        try:
            return self.run_shell(f"sh {shlex.quote(path)} </dev/null", timeout=timeout, check=check)
        finally:
            self._remove([path])

    def _put(self, local: Path, remote: str, offset: int, progress: ProgressFn | None) -> None:
        size = local.stat().st_size
        self._check_size(str(local), size)
        data = local.read_bytes()
        # A fresh copy lands beside the destination and is moved in only once its checksum matches.
        dest = remote if offset else f"{remote}.edgedeploy-partial"

        def report(done: int, total: int) -> None:
            if progress:
                progress(offset + done, size)

        self._write_remote(dest, data[offset:], append=bool(offset), progress=report)
        theirs = self._remote_digest(dest)
        ours = self._local_digest(data)
        if theirs != ours:
            if not offset:
                self._remove([dest])
            raise TargetError(
                f"{self.display}: {local} arrived damaged at {remote} ({self._digest_name()} {theirs} on the target, {ours} here)",
                "the serial line dropped or changed bytes; retry, lower the baud rate, or " + NETWORK_HINT,
            )
        if not offset:
            self._check(f"mv -f {shlex.quote(dest)} {shlex.quote(remote)}", f"cannot move the copy into {remote}")

    def _get(self, remote: str, local: Path, progress: ProgressFn | None) -> None:
        q = shlex.quote(remote)
        out = self._check(f"wc -c < {q}", f"cannot read {remote} on the target")
        try:
            size = int(out.split()[-1])
        except (ValueError, IndexError):
            raise TargetError(f"{self.display}: cannot tell the size of {remote}: {out!r}", "") from None
        self._check_size(remote, size)
        if "dd" not in self.tools:
            raise TargetError(f"{self.display}: the target has no dd to read {remote} in chunks", NETWORK_HINT)
        data = bytearray()
        for index in range((size + CHUNK_BYTES - 1) // CHUNK_BYTES):
            read = f"dd if={q} bs={CHUNK_BYTES} skip={index} count=1 2>/dev/null"
            if "base64" in self.tools:
                text = self._check(f"{read} | base64", f"cannot read {remote}", self._chunk_timeout(CHUNK_BYTES))
                try:
                    data += base64.b64decode(b"".join(text.split()), validate=True)
                except binascii.Error as exc:
                    raise TargetError(f"{self.display}: {remote} arrived damaged: {exc}", NETWORK_HINT) from exc
            else:  # od is POSIX: two hex digits a byte, twice as slow as base64
                text = self._check(f"{read} | od -An -v -tx1", f"cannot read {remote}", 2 * self._chunk_timeout(CHUNK_BYTES))
                data += bytes.fromhex(text.decode("ascii", "replace"))
            if progress:
                progress(len(data), size)
        if progress and size == 0:
            progress(0, 0)
        theirs = self._remote_digest(remote)
        ours = self._local_digest(bytes(data))
        if len(data) != size or theirs != ours:
            raise TargetError(
                f"{self.display}: {remote} arrived damaged ({len(data)} of {size} bytes, {self._digest_name()} {ours} here, {theirs} on the target)",
                "the serial line dropped or changed bytes; retry, lower the baud rate, or " + NETWORK_HINT,
            )
        local.write_bytes(bytes(data))

    def close(self) -> None:
        if self._port is None:
            return
        try:
            if self._ready:
                # Leave the console as found: log out what we logged into, else give back echo and prompt.
                restore = "exit" if self._logged_in else "stty echo 2>/dev/null; set -o emacs 2>/dev/null; PS1=$_edgedeploy_ps1"
                self._write(restore.encode() + b"\n")
                self._port.flush()
        except (TargetError, serial.SerialException, OSError):
            pass
        self._close_port()

    # --- helpers ---

    def _must(self, inner: str, timeout: float, what: str, heredoc: str = "") -> tuple[int, bytes]:
        """_framed for the transport's own steps: a timeout there is a TargetError, not the caller's."""
        try:
            return self._framed(inner, timeout, heredoc)
        except TimeoutError:
            raise CommandTimeout(
                f"{self.display}: timed out after {timeout:g} s on {self.device} ({what})",
                "the serial line may be too slow or the board hung; retry, or " + NETWORK_HINT,
            ) from None

    def _check(self, command: str, what: str, timeout: float | None = None) -> bytes:
        status, out = self._must(command, timeout or self.timeout, what)
        if status != 0:
            last = out.decode("utf-8", "replace").strip().splitlines()
            raise TargetError(f"{self.display}: {what} (exit {status}{': ' + last[-1] if last else ''})", "")
        return out

    def _check_size(self, name: str, size: int) -> None:
        if size <= self.max_file_bytes:
            return
        raise TargetError(
            f"{name} is {size / 2**20:.1f} MiB; over serial at {self.baud} baud that takes about {_hours(transfer_seconds(size, self.baud))}",
            NETWORK_HINT,
        )

    def _chunk_timeout(self, nbytes: int) -> float:
        return self.timeout + 3 * transfer_seconds(nbytes, self.baud)

    def _upload_temp(self, data: bytes) -> str:
        path = f"{self.tmpdir}/.edgedeploy-{secrets.token_hex(6)}"
        self._write_remote(path, data, append=False, progress=None)
        return path

    def _remove(self, paths: list[str]) -> None:
        if not paths or not self._ready:  # after a failed recovery, do not wait on a re-login
            return
        try:
            self._framed("rm -f " + " ".join(shlex.quote(p) for p in paths), self.timeout)
        except (TimeoutError, TargetError):
            pass  # a stray temp file is not worth failing the command for

    def _write_remote(self, path: str, data: bytes, *, append: bool, progress: ProgressFn | None) -> None:
        """Write data into path on the target in chunks that each round-trip (pacing the line)."""
        q = shlex.quote(path)
        if not data:
            self._check(f": {'>>' if append else '>'} {q}", f"cannot write {path}")
            if progress:
                progress(0, 0)
        for start in range(0, len(data), CHUNK_BYTES):
            chunk = data[start : start + CHUNK_BYTES]
            redirect = ">>" if append or start else ">"
            if "base64" in self.tools:
                encoded = base64.b64encode(chunk).decode()
                eof = f"EDX_{secrets.token_hex(6)}"
                lines = "".join(encoded[i : i + B64_LINE] + "\n" for i in range(0, len(encoded), B64_LINE))
                status, out = self._must(f"base64 -d {redirect} {q} <<'{eof}'", self._chunk_timeout(len(chunk)), f"writing {path}", f"{lines}{eof}\n")
            else:  # printf with octal escapes (\x is not POSIX) where the board lacks base64
                parts = [chunk[i : i + 200] for i in range(0, len(chunk), 200)]
                body = " &&\n".join(f"printf '{_octal(p)}'" for p in parts)
                status, out = self._must(f"{{ {body}\n}} {redirect} {q}", 4 * self._chunk_timeout(len(chunk)), f"writing {path}")
            if status != 0:
                raise TargetError(
                    f"{self.display}: cannot write {path} on the target: {out.decode('utf-8', 'replace').strip()}",
                    "check that the directory exists, is writable and has space",
                )
            if progress:
                progress(start + len(chunk), len(data))

    def _digest_name(self) -> str:
        return "sha256" if self.tools & {"sha256sum", "openssl", "python3"} else "cksum"

    def _remote_digest(self, path: str) -> str:
        q = shlex.quote(path)
        if "sha256sum" in self.tools:
            command = f"sha256sum < {q}"
        elif "openssl" in self.tools:
            command = f"openssl dgst -sha256 < {q}"
        elif "python3" in self.tools:
            command = f"python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())' < {q}"
        else:  # POSIX cksum: weaker, but every board has it
            out = self._check(f"cksum < {q}", f"cannot checksum {path}")
            return " ".join(out.decode().split()[:2])
        out = self._check(command, f"cannot checksum {path}", self._chunk_timeout(self.max_file_bytes))
        m = _SHA256.search(out)
        if not m:
            raise TargetError(f"{self.display}: unreadable checksum of {path}: {out!r}", "")
        return m.group(1).decode()

    def _local_digest(self, data: bytes) -> str:
        if self._digest_name() == "sha256":
            return hashlib.sha256(data).hexdigest()
        return f"{posix_cksum(data)} {len(data)}"

    def _screen_tail(self) -> str:
        return self._screen.tail(200).decode("utf-8", "replace").strip()[-120:]

    def _write(self, data: bytes) -> None:
        assert self._port is not None
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise TargetError(f"{self.display}: writing to {self.device} failed: {exc}", OPEN_HINT) from exc

    def _read(self) -> bytes:
        """Whatever has arrived, waiting at most READ_SLICE_S for the first byte."""
        assert self._port is not None
        try:
            data: bytes = self._port.read(max(1, self._port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise TargetError(f"{self.display}: reading from {self.device} failed: {exc}", OPEN_HINT) from exc
        return data

    def _drain(self) -> None:
        """Drop what arrived between commands (kernel noise, a late prompt)."""
        assert self._port is not None
        while self._port.in_waiting:
            self._read()

    def _close_port(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except (serial.SerialException, OSError):
                pass
            self._port = None
        self._ready = False


def _prompt_kind(tail: bytes) -> str | None:
    """What the console's unfinished last line asks for (a prompt is never followed by a newline)."""
    last = tail[tail.rfind(b"\n") + 1 :]
    if _LOGIN_PROMPT.search(last):
        return "login"
    if _PASSWORD_PROMPT.search(last):
        return "password"
    if _SHELL_PROMPT.search(last):
        return "shell"
    return None


def _tty_safe(command: str) -> bool:
    """Printable ASCII, tabs and newlines only: nothing a canonical tty would act on."""
    return all(c in "\n\t" or " " <= c <= "~" for c in command)


def _octal(data: bytes) -> str:
    return "".join(chr(b) if chr(b).isalnum() and b < 128 else f"\\{b:03o}" for b in data)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 0.1:
        return f"{hours:,.1f} hours"
    return f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} seconds"


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def posix_cksum(data: bytes) -> int:
    """The CRC that POSIX `cksum` prints (polynomial 0x04C11DB7, length appended), for boards
    without any sha256 tool."""
    crc = 0
    for b in data + _length_bytes(len(data)):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ b]
    return ~crc & 0xFFFFFFFF


def _length_bytes(n: int) -> bytes:
    out = bytearray()
    while n:
        out.append(n & 0xFF)
        n >>= 8
    return bytes(out)
