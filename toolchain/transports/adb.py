"""Android phones over adb (TargetSpec kind "adb"), using only the `adb` client binary.

Every primitive is one `adb` invocation: `adb shell` for commands, `adb push`/`adb pull` for
files. Nothing is installed on the phone; the probe's getprop, /proc and df reads go through
`_exec` like any other command.

Why the wrapping below:
- Devices without the shell_v2 feature (Android < 7) do not pass the exit status back and
  merge stderr into stdout, so every command ends by printing a random marker and `$?`, and the
  status is parsed off the end of stdout. Missing marker = adb failed, not the command.
- Those old devices also run commands on a PTY (LF -> CRLF); detected from the marker line and
  undone. stdin through `adb shell` is unreliable there, so stdin, scripts and over-long
  command lines are pushed to a temp file under /data/local/tmp and redirected from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from toolchain.core.errors import CommandFailed, CommandTimeout, TargetError
from toolchain.core.nouns import TargetSpec
from toolchain.transports.base import MAX_OUTPUT_BYTES, Capabilities, CommandResult, ProgressFn, Transport
from toolchain.transports.process import communicate_bounded, dies_with_us

STAGING_DIR = "/data/local/tmp"  # writable by the shell user on every Android release
# An OPEN message must fit the device's max payload (4096 bytes before Android 7, with the
# "shell:" prefix and our wrapper); longer command lines are pushed as a script file.
MAX_INLINE_COMMAND = 3072
ADMIN_TIMEOUT_S = 30.0  # adb devices / features / connect; the first call also starts the server
TRANSFER_IDLE_TIMEOUT_S = 120.0  # push/pull print progress every 64 KiB; silence this long = hung
COPY_CHUNK = 4 << 20

INSTALL_HINT = "install Android platform-tools (Debian/Ubuntu: apt-get install adb), or set ADB=/path/to/adb"
UNAUTHORIZED_HINT = (
    "accept the USB debugging prompt on the phone (tick 'Always allow from this computer'), then retry"
)
OFFLINE_HINT = (
    "reconnect the USB cable (or `adb reconnect`); if it stays offline, restart the adb server: "
    "`adb kill-server && adb start-server`"
)
NO_DEVICE_HINT = (
    "plug the phone in with USB debugging enabled (Settings > Developer options), or `adb connect HOST:PORT` "
    "for wireless debugging; `adb devices` must list it"
)

_STATUS = re.compile(rb"(\d+)(\r?)\n?")
_PERCENT = re.compile(rb"\[\s*(\d{1,3})%\]")
_ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
_TCP_SERIAL = re.compile(r"^[^\s:]+:\d+$")


class AdbTransport(Transport):
    """A shell and file transfer on one adb device."""

    capabilities = Capabilities(file_transfer=True, max_file_bytes=None, separate_stderr=True, resumable_put=True)

    def __init__(self, spec: TargetSpec, *, adb_path: str | None = None, server_port: int | None = None) -> None:
        super().__init__(spec.name or "adb")
        self.spec = spec
        self.adb = find_adb(adb_path)
        self.server_port = server_port
        self.serial = self._resolve_serial(spec.adb_serial)
        if self.serial not in self.display:
            self.display = f"adb:{self.serial}"
        self.features = self._features()
        # Without shell_v2 the device sends one merged stream and no exit status.
        self.shell_v2 = "shell_v2" in self.features
        self.capabilities = Capabilities(
            file_transfer=True, max_file_bytes=None, separate_stderr=self.shell_v2, resumable_put=True
        )

    # --- Transport primitives ---

    def _exec(self, command: str, timeout: float, stdin: bytes | None, hold_stdin: bool = False) -> tuple[int, bytes, bytes]:
        # hold_stdin is not needed here: the adb client dies with us (dies_with_us), and adbd then
        # kills the command it ran (shell_v2), as it does when we kill the client on a signal.
        deadline = time.monotonic() + timeout
        staged: list[str] = []
        done = False
        try:
            # `sh -c` so that `exit`, a trailing `&` or `#` in the command cannot skip the marker.
            inner = f"sh -c {shlex.quote(command)}"
            if len(inner.encode()) > MAX_INLINE_COMMAND:
                staged.append(self._stage(command.encode(), ".sh", _left(deadline)))
                inner = f"sh {shlex.quote(staged[-1])}"
            if stdin is not None:
                staged.append(self._stage(stdin, ".in", _left(deadline)))
            # Never adb's own stdin: old devices do not see its end, so `cat` would hang.
            inner += f" < {shlex.quote(staged[-1]) if stdin is not None else '/dev/null'}"
            result = self._shell_status(inner, staged, _left(deadline))
            done = True
            return result
        finally:
            if staged and not done:
                self._remove_quietly(staged)

    def run_script(self, script: str, *, timeout: float = 60.0, check: bool = True) -> CommandResult:
        """Run a POSIX sh script from a pushed temp file (`sh FILE`), not fed through stdin."""
        start = time.monotonic()
        try:
            path = self._stage(script.encode(), ".sh", timeout)
        except TimeoutError as exc:
            raise CommandTimeout(
                f"{self.display}: pushing a script timed out after {timeout:g} s",
                "the phone or the USB link may be hung; replug it and retry",
            ) from exc
        q = shlex.quote(path)
        try:
            return self.run_shell(
                f"sh {q} < /dev/null; __rc=$?; rm -f {q}; exit $__rc",
                timeout=max(timeout - (time.monotonic() - start), 1.0),
                check=check,
            )
        except CommandFailed:
            raise  # the script ran, and removed itself
        except TargetError:
            self._remove_quietly([path])
            raise

    def _put(self, local: Path, remote: str, offset: int, progress: ProgressFn | None) -> None:
        with self._timeouts_as_errors(f"push to {remote}"):
            self._put_file(local, remote, offset, _changes_only(progress))

    def _put_file(self, local: Path, remote: str, offset: int, progress: ProgressFn | None) -> None:
        total = local.stat().st_size
        if offset <= 0:
            self._push(local, remote, progress, base=0, total=total)
            return
        if offset > total:
            raise TargetError(
                f"{self.display}: cannot resume {local} at byte {offset}: the file has only {total} bytes",
                "restart the transfer from the beginning",
            )
        self._check_resume_point(remote, offset)
        part = f"{remote}.edgedeploy-append-{secrets.token_hex(4)}"
        with tempfile.TemporaryDirectory(prefix="edgedeploy-adb-") as tmp:
            # adb push copies whole files only: ship the tail as its own file, append on the phone.
            tail = Path(tmp) / "tail"
            with local.open("rb") as fin, tail.open("wb") as fout:
                fin.seek(offset)
                shutil.copyfileobj(fin, fout, COPY_CHUNK)
            self._push(tail, part, progress, base=offset, total=total)
        self._append(remote, part, offset, total)

    def _get(self, remote: str, local: Path, progress: ProgressFn | None) -> None:
        with self._timeouts_as_errors(f"pull of {remote}"):
            self._get_file(remote, local, _changes_only(progress))

    def _get_file(self, remote: str, local: Path, progress: ProgressFn | None) -> None:
        total = self._remote_size(remote) if progress else None
        if progress:
            progress(0, total or 0)
        # Pull beside the destination and rename, so a failed pull never leaves a truncated file.
        partial = local.with_name(f".{local.name}.adb-partial")
        report = _percent_reporter(progress, 0, total) if progress and total else None
        try:
            self._transfer(["pull", "--", remote, str(partial.resolve())], report, what=f"pull {remote}")
            os.replace(partial, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        if progress:
            size = local.stat().st_size
            progress(size, size)

    def home(self) -> str:
        # The shell user's $HOME is unset or "/" (read-only); /data/local/tmp is its writable home.
        return STAGING_DIR

    @contextlib.contextmanager
    def _timeouts_as_errors(self, what: str) -> Iterator[None]:
        # put/get have no base-class wrapper that turns TimeoutError into CommandTimeout.
        try:
            yield
        except TimeoutError as exc:
            raise CommandTimeout(
                f"{self.display}: {what} timed out ({exc})",
                "the phone or the USB link may be hung; replug it (or `adb reconnect`) and retry",
            ) from exc

    # --- commands ---

    def _shell_status(self, inner: str, staged: Sequence[str], timeout: float) -> tuple[int, bytes, bytes]:
        marker = f"__edgedeploy_rc_{secrets.token_hex(8)}__"
        cleanup = f"rm -f {shlex.join(staged)}; " if staged else ""
        line = f"{inner}; __rc=$?; {cleanup}echo {marker}:$__rc"
        proc = self._adb(["-s", self.serial, "shell", "-n", line], timeout=timeout)
        out = proc.stdout
        # The last marker, even if a stray background writer appended output after it.
        at = out.rfind(marker.encode() + b":")
        found = _STATUS.match(out, at + len(marker) + 1) if at >= 0 else None
        if found is None:
            # No marker: adb itself failed (device gone, server died), not the command.
            self._raise_adb_failure("shell", proc)
        status = int(found.group(1))
        out = out[:at] + out[found.end() :]
        if found.group(2):
            # CRLF after the marker: an old adbd ran us on a PTY, which turned every LF into CRLF.
            out = out.replace(b"\r\n", b"\n")
        return status, out, proc.stderr

    def _remove_quietly(self, paths: Sequence[str]) -> None:
        """Best effort after a failure or timeout: the wrapper normally removes staged files."""
        with contextlib.suppress(TargetError, TimeoutError):
            self._adb(["-s", self.serial, "shell", "-n", "rm -f " + shlex.join(paths)], timeout=ADMIN_TIMEOUT_S)

    # --- files ---

    def _stage(self, data: bytes, suffix: str, timeout: float) -> str:
        """Push bytes to a fresh temp file under /data/local/tmp; return its path there."""
        remote = f"{STAGING_DIR}/.edgedeploy-{secrets.token_hex(8)}{suffix}"
        with tempfile.TemporaryDirectory(prefix="edgedeploy-adb-") as tmp:
            local = Path(tmp) / "stage"
            local.write_bytes(data)
            proc = self._adb(["-s", self.serial, "push", "--", str(local), remote], timeout=timeout)
        if proc.returncode != 0:
            self._raise_adb_failure(f"push to {remote}", proc)
        return remote

    def _push(self, local: Path, remote: str, progress: ProgressFn | None, *, base: int, total: int) -> None:
        if progress:
            progress(base, total)
        report = _percent_reporter(progress, base, total) if progress else None
        self._transfer(["push", "--", str(local.resolve()), remote], report, what=f"push to {remote}")
        if progress:
            progress(total, total)

    def _check_resume_point(self, remote: str, offset: int) -> None:
        size = self._remote_size(remote)
        if size is None or size < offset:
            have = "does not exist" if size is None else f"has {size} bytes"
            raise TargetError(
                f"{self.display}: cannot resume {remote} at byte {offset}: it {have}",
                "restart the transfer from the beginning (offset 0)",
            )

    def _append(self, remote: str, part: str, offset: int, total: int) -> None:
        r, p = shlex.quote(remote), shlex.quote(part)
        # Cut anything past the offset (a half-written earlier attempt), append, report the size.
        # truncate is toybox (Android 6+); dd with seek= and no input truncates on older ones.
        script = (
            f"size=$(wc -c < {r}) || {{ rm -f {p}; exit 1; }}; "
            f'if [ "$size" -gt {offset} ]; then '
            f"truncate -s {offset} {r} 2>/dev/null || dd if=/dev/null of={r} bs=1 seek={offset} 2>/dev/null "
            f"|| {{ rm -f {p}; exit 1; }}; fi; "
            f"cat {p} >> {r}; rc=$?; rm -f {p}; [ $rc -eq 0 ] || exit $rc; wc -c < {r}"
        )
        status, out, err = self._exec(script, ADMIN_TIMEOUT_S + total / (20 << 20), None)
        text = out.decode("utf-8", "replace").strip()
        if status != 0 or not text.isdigit() or int(text) != total:
            detail = (err.decode("utf-8", "replace").strip() or text).splitlines()
            raise TargetError(
                f"{self.display}: appending to {remote} failed (exit {status}, remote size {text or '?'}, "
                f"expected {total})" + (f": {detail[-1]}" if detail else ""),
                "check free space on the phone (df /data), then restart the transfer from offset 0",
            )

    def _remote_size(self, remote: str) -> int | None:
        status, out, _err = self._exec(f"wc -c < {shlex.quote(remote)}", ADMIN_TIMEOUT_S, None)
        text = out.decode("utf-8", "replace").strip()
        return int(text) if status == 0 and text.isdigit() else None

    def _transfer(self, args: list[str], report: Callable[[int], None] | None, *, what: str) -> None:
        """Run adb push/pull on a pseudo-terminal: only then does adb print "[ NN%]" progress."""
        argv = self._argv(["-s", self.serial, *args])
        status, tail = _run_with_pty(argv, report, TRANSFER_IDLE_TIMEOUT_S)
        if status != 0:
            self._raise_adb_failure(what, None, status=status, output=tail)

    # --- device selection and state ---

    def _resolve_serial(self, wanted: str | None) -> str:
        devices = self._devices()
        if wanted is None:
            if not devices:
                raise TargetError("adb: no Android device attached", NO_DEVICE_HINT)
            if len(devices) > 1:
                listing = ", ".join(f"{s} ({st})" for s, st in devices.items())
                first = next(iter(devices))
                raise TargetError(
                    f"adb: {len(devices)} devices attached and the target names none: {listing}",
                    f"choose one with adb:SERIAL (or serial: in its targets/*.yaml), e.g. --target adb:{first}",
                )
            wanted = next(iter(devices))
        elif wanted not in devices and _TCP_SERIAL.match(wanted):
            # A network device the server has not seen yet: connect once, like `adb connect`.
            with contextlib.suppress(TimeoutError):
                self._adb(["connect", wanted], timeout=ADMIN_TIMEOUT_S)
            devices = self._devices()
        if wanted not in devices:
            attached = ", ".join(devices) or "none"
            raise TargetError(f"adb: device {wanted} not found (attached: {attached})", NO_DEVICE_HINT)
        self._check_state(wanted, devices[wanted])
        return wanted

    def _check_state(self, serial: str, state: str) -> None:
        if state == "device":
            return
        if state == "unauthorized":
            raise TargetError(f"adb: device {serial} is unauthorized (USB debugging not yet allowed)", UNAUTHORIZED_HINT)
        if state == "offline":
            raise TargetError(f"adb: device {serial} is offline (adb cannot talk to it)", OFFLINE_HINT)
        if state.startswith("no permissions"):
            raise TargetError(
                f"adb: no permission to open device {serial}",
                "add a udev rule for the phone (Debian: apt-get install android-sdk-platform-tools-common), "
                "then replug it",
            )
        raise TargetError(
            f"adb: device {serial} is in state {state!r}, not 'device'",
            "boot the phone normally (not recovery/bootloader/sideload) and unlock it",
        )

    def _devices(self) -> dict[str, str]:
        try:
            proc = self._adb(["devices"], timeout=ADMIN_TIMEOUT_S)
        except TimeoutError as exc:
            raise TargetError(
                f"adb devices did not answer within {ADMIN_TIMEOUT_S:g} s",
                "restart the adb server: `adb kill-server && adb start-server`",
            ) from exc
        if proc.returncode != 0:
            raise TargetError(
                f"adb devices failed (exit {proc.returncode}): {_last_line(proc.stderr or proc.stdout)}",
                "restart the adb server: `adb kill-server && adb start-server`",
            )
        devices: dict[str, str] = {}
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            serial, tab, state = line.partition("\t")
            if tab and serial and not line.startswith("*"):
                devices[serial.strip()] = state.strip()
        return devices

    def _features(self) -> set[str]:
        try:
            proc = self._adb_checked(["-s", self.serial, "features"], timeout=ADMIN_TIMEOUT_S)
        except TimeoutError as exc:
            raise TargetError(f"adb: device {self.serial} did not answer within {ADMIN_TIMEOUT_S:g} s", OFFLINE_HINT) from exc
        return {f.strip() for f in proc.stdout.decode("utf-8", "replace").split() if f.strip()}

    def _raise_adb_failure(
        self,
        what: str,
        proc: subprocess.CompletedProcess[bytes] | None,
        *,
        status: int | None = None,
        output: bytes = b"",
    ) -> NoReturn:
        """adb (not the remote command) failed: blame the device state when that explains it."""
        if proc is not None:
            status, output = proc.returncode, proc.stderr + b"\n" + proc.stdout
        try:
            devices = self._devices()
        except TargetError:
            devices = {}
        if self.serial not in devices:
            raise TargetError(f"adb: device {self.serial} disappeared during {what}", NO_DEVICE_HINT)
        self._check_state(self.serial, devices[self.serial])
        raise TargetError(
            f"{self.display}: adb {what} failed (exit {status}): {_last_line(output) or 'no output'}",
            f"check free space and permissions on the phone; try `adb -s {self.serial} shell` by hand",
        )

    # --- running adb ---

    def _argv(self, args: Sequence[str]) -> list[str]:
        port = ["-P", str(self.server_port)] if self.server_port else []
        return [self.adb, *port, *args]

    def _adb(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        """Run adb to completion; kill it and raise TimeoutError past the timeout."""
        proc = subprocess.Popen(
            dies_with_us(self._argv(args)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C goes to us, not straight to adb
        )
        try:
            out, err = communicate_bounded(proc, None, max(timeout, 0.001), MAX_OUTPUT_BYTES)
        except BaseException as exc:  # a timeout, too much output, or a signal on this side
            # Killing the client closes its stream; adbd then kills the remote command (shell_v2).
            proc.kill()
            proc.wait()
            if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
                raise TimeoutError(shlex.join(args)) from exc
            raise
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def _adb_checked(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        proc = self._adb(args, timeout=timeout)
        if proc.returncode != 0:
            self._raise_adb_failure(shlex.join(a for a in args if a not in ("-s", self.serial)), proc)
        return proc


def find_adb(adb_path: str | None = None) -> str:
    """The adb binary: the argument, else $ADB, else PATH."""
    chosen = adb_path or os.environ.get("ADB")
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        found = shutil.which(chosen)
        if found:
            return found
        source = "adb_path" if adb_path else "$ADB"
        raise TargetError(f"adb not found: {source} is {chosen!r}, which is not an executable", INSTALL_HINT)
    found = shutil.which("adb")
    if not found:
        raise TargetError("adb not found on PATH (needed for adb: targets)", INSTALL_HINT)
    return found


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _last_line(output: bytes) -> str:
    text = _ANSI.sub(b"", output).replace(b"\r", b"\n").decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fail" in line.lower()]
    return (errors or lines or [""])[-1]


def _changes_only(progress: ProgressFn | None) -> ProgressFn | None:
    """Report each (done, total) once: start, adb's 100% and our final call often coincide."""
    if progress is None:
        return None
    last: list[tuple[int, int]] = []

    def report(done: int, total: int) -> None:
        if last != [(done, total)]:
            last[:] = [(done, total)]
            progress(done, total)

    return report


def _percent_reporter(progress: ProgressFn, base: int, total: int) -> Callable[[int], None]:
    """Map adb's percentage of the pushed/pulled file onto (bytes done, total) of the whole copy."""
    span = total - base

    def report(percent: int) -> None:
        progress(base + span * min(percent, 100) // 100, total)

    return report


def _run_with_pty(argv: list[str], report: Callable[[int], None] | None, idle_timeout: float) -> tuple[int, bytes]:
    """Run argv with stdout/stderr on a pty; feed "[ NN%]" updates to report. (status, output tail)."""
    import pty  # POSIX only, like the rest of the host side

    env = dict(os.environ)
    if env.get("TERM", "dumb") == "dumb":
        env["TERM"] = "xterm"  # adb prints progress only on a "smart" terminal
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
    finally:
        os.close(slave)
    tail = bytearray()
    last_percent = -1
    last_output = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None and time.monotonic() - last_output > 1.0:
                    break
                if time.monotonic() - last_output > idle_timeout:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise TimeoutError(f"{shlex.join(argv)}: no progress for {idle_timeout:g} s")
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            last_output = time.monotonic()
            tail += data
            del tail[:-8192]
            if report is not None:
                found = _PERCENT.findall(bytes(tail[-512:]))
                if found and int(found[-1]) != last_percent:
                    last_percent = int(found[-1])
                    report(last_percent)
        status = proc.wait(timeout=ADMIN_TIMEOUT_S)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, bytes(tail)
