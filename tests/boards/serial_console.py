"""A fake Raspberry Pi serial console for tests: a socat pty pair, a getty-like login and a real shell.

    with SerialConsole() as console:          # console.device: the path pyserial opens
        SerialTransport(TargetSpec(name="pi", kind="serial", device=str(console.device)), ...)

socat joins two pseudo-terminals: `ttyS0` (the host's end, opened with pyserial as if it were a
USB-serial adapter) and `console` (the board's end). A separate Python process (this file run as
a script) sits on the board's end: it prints the `raspberrypi login:` and `Password:` prompts,
echoes like a tty, checks the credentials, then bridges the line to a real interactive shell
under its own pty, so `stty -echo`, Ctrl-C and job control behave as on a board. With
`inject_kernel_logs` it writes printk lines (`[  123.456789] usb 1-1.3: ...`) into the stream at
random moments, including in the middle of the shell's output, as a kernel console does.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from types import TracebackType
from typing import Self

BAUD = 115200
SETUP_HINT = "socat is not installed: run scripts/setup.sh --test (it installs the test rigs' tools, socat among them)"
PASSWORD_ENV = "SERIAL_CONSOLE_PASSWORD"  # the password reaches the console process by env, not argv

KERNEL_MESSAGES = [
    "usb 1-1.3: new high-speed USB device number 4 using xhci_hcd",
    "usb 1-1.3: New USB device found, idVendor=0781, idProduct=5583, bcdDevice= 1.00",
    "usb-storage 1-1.3:1.0: USB Mass Storage device detected",
    "brcmfmac: brcmf_cfg80211_set_power_mgmt: power save enabled",
    "hwmon hwmon1: Undervoltage detected!",
    "EXT4-fs (mmcblk0p2): re-mounted. Opts: (null). Quota mode: none.",
    "bcmgenet fd580000.ethernet eth0: Link is Up - 1Gbps/Full - flow control rx/tx",
]


class SerialConsole:
    """Context manager: start socat and the console process, stop both on exit."""

    def __init__(
        self,
        board_dir: Path | None = None,
        *,
        user: str = "pi",
        password: str = "raspberry",
        inject_kernel_logs: bool = False,
        hostname: str | None = None,
        seed: int | None = None,
        shell: list[str] | None = None,
    ) -> None:
        self.board_dir = board_dir
        self.user = user
        self.password = password
        self.inject_kernel_logs = inject_kernel_logs
        self.hostname = hostname or _board_hostname(board_dir) or "raspberrypi"
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.shell = shell  # login shell argv; default bash with readline, as on Raspberry Pi OS
        self._dir: Path | None = None
        self._socat: subprocess.Popen[bytes] | None = None
        self._console: subprocess.Popen[bytes] | None = None

    @property
    def device(self) -> Path:
        """The host end of the line: open this with pyserial."""
        if self._dir is None:
            raise RuntimeError("SerialConsole is not started; use it as a context manager")
        return self._dir / "ttyS0"

    @property
    def target(self) -> str:
        return f"serial:{self.device}@{BAUD}"

    @property
    def log_path(self) -> Path:
        """socat's and the console process's stderr, for debugging a failing test."""
        return self.device.with_name("console.log")

    def __enter__(self) -> Self:
        if shutil.which("socat") is None:
            raise RuntimeError(SETUP_HINT)
        self._dir = Path(tempfile.mkdtemp(prefix="edgedeploy-serial-"))
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        assert self._dir is not None
        board_end = self._dir / "console"
        home = self._dir / "home"
        home.mkdir()
        log = self.log_path.open("ab")
        self._socat = subprocess.Popen(
            ["socat", "-d", "-d", f"pty,raw,echo=0,link={self.device}", f"pty,raw,echo=0,link={board_end}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 10
        while not (self.device.exists() and board_end.exists()):
            if self._socat.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not create the pty pair; see {self.log_path}")
            time.sleep(0.02)
        self._console = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--console",
                str(board_end),
                "--user",
                self.user,
                "--hostname",
                self.hostname,
                "--home",
                str(home),
                "--seed",
                str(self.seed),
                "--shell",
                json.dumps(self._shell_argv()),
            ]
            + (["--inject-kernel-logs"] if self.inject_kernel_logs else []),
            env={**os.environ, PASSWORD_ENV: self.password},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        # The console process says "ready" once it holds its end, so nothing we send is lost.
        assert self._console.stdout is not None
        ready, _, _ = select.select([self._console.stdout], [], [], 10)
        if not ready or self._console.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the console process did not start; see {self.log_path}")

    def _shell_argv(self) -> list[str]:
        bash = shutil.which("bash")
        argv = self.shell or ([bash, "--noprofile", "--norc", "-i"] if bash else ["/bin/sh", "-i"])
        if self.board_dir is None:
            return argv
        # The board overlay (another module) runs the shell in a mount namespace showing the
        # board's /proc/cpuinfo etc.; loaded by path so this file works however tests are run.
        overlay_py = Path(__file__).with_name("overlay.py")
        if not overlay_py.exists():
            raise RuntimeError(f"board_dir given but {overlay_py} is missing")
        spec = importlib.util.spec_from_file_location("_edgedeploy_board_overlay", overlay_py)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return list(module.namespace_argv(self.board_dir, argv))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for proc in (self._console, self._socat):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._console is not None and self._console.stdout is not None:
            self._console.stdout.close()
        self._console = self._socat = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _board_hostname(board_dir: Path | None) -> str | None:
    """The `hostname:` scalar of the board's board.yaml, so the login prompt names the board."""
    yaml = board_dir / "board.yaml" if board_dir else None
    if yaml is None or not yaml.is_file():
        return None
    m = re.search(r"^hostname:\s*['\"]?([\w.-]+)", yaml.read_text(), re.MULTILINE)
    return m.group(1) if m else None


# --- the console process (board side) -------------------------------------------------------


class _Line:
    """The board's end of the serial line, with optional printk noise written into it."""

    def __init__(self, fd: int, rng: random.Random, noisy: bool) -> None:
        self.fd = fd
        self.rng = rng
        self.noisy = noisy
        self.start = time.monotonic()
        self.next_noise = self._schedule()
        self.out = bytearray()  # written when the line accepts it; a pty can be full
        self.typeahead = bytearray()  # read from the line but not consumed yet

    def _schedule(self) -> float:
        return time.monotonic() + self.rng.uniform(0.02, 0.3)

    def kernel_line(self) -> bytes:
        t = 100 + time.monotonic() - self.start
        return f"[{int(t):5d}.{int(t % 1 * 1e6):06d}] {self.rng.choice(KERNEL_MESSAGES)}\r\n".encode()

    def write(self, data: bytes) -> None:
        if self.noisy and data and self.rng.random() < 0.3:
            # A kernel console prints whenever printk runs: also in the middle of a line.
            cut = self.rng.randrange(len(data) + 1)
            data = data[:cut] + self.kernel_line() + data[cut:]
        self.out += data
        if len(self.out) > 1 << 20:  # nobody is listening: a UART drops what no one reads
            del self.out[: len(self.out) - (1 << 20)]
        self.flush(block=False)

    def flush(self, block: bool) -> None:
        while self.out:
            if block:
                select.select([], [self.fd], [], 1)
            try:
                n = os.write(self.fd, self.out)
            except BlockingIOError:
                if not block:
                    return
                continue
            del self.out[:n]

    def wait(self, others: list[int], timeout: float | None) -> list[int]:
        """Wait for input on the line or on others; inject timed noise meanwhile."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.noisy and now >= self.next_noise:
                self.out += self.kernel_line()
                self.next_noise = self._schedule()
            waits = [t - now for t in ([end] if end is not None else []) + ([self.next_noise] if self.noisy else [])]
            wait = max(0.0, min(waits)) if waits else None
            ready, _, _ = select.select([self.fd, *others], [self.fd] if self.out else [], [], wait)
            self.flush(block=False)
            if ready:
                return ready
            if end is not None and time.monotonic() >= end:
                return []

    def read_byte(self) -> int:
        while not self.typeahead:
            if self.fd in self.wait([], None):
                self.typeahead += _read(self.fd)
        b = self.typeahead[0]
        del self.typeahead[0]
        return b


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def _read_line(line: _Line, echo: bool) -> bytes | None:
    """Read one line as a canonical tty would; None when Ctrl-C abandons it."""
    buf = bytearray()
    while True:
        b = line.read_byte()
        if b in (0x0D, 0x0A):
            line.write(b"\r\n")
            return bytes(buf)
        if b in (0x7F, 0x08):
            if buf:
                buf.pop()
                if echo:
                    line.write(b"\b \b")
        elif b == 0x03:
            line.write(b"^C\r\n")
            return None
        elif b >= 0x20:
            buf.append(b)
            if echo:
                line.write(bytes([b]))


def _getty(line: _Line, user: str, password: str, hostname: str) -> None:
    """Prompt until the right credentials arrive (like agetty + login)."""
    line.write(f"\r\nDebian GNU/Linux 12 {hostname} ttyS0\r\n\r\n".encode())
    while True:
        line.write(f"{hostname} login: ".encode())
        name = _read_line(line, echo=True)
        if not name:
            continue
        line.write(b"Password: ")
        given = _read_line(line, echo=False)
        if given is None:
            continue
        if name.decode(errors="replace") == user and given.decode(errors="replace") == password:
            line.write(
                f"Linux {hostname} 6.1.21-v8+ #1642 SMP PREEMPT Mon Apr  3 17:24:16 BST 2023 aarch64\r\n\r\n"
                "The programs included with the Debian GNU/Linux system are free software;\r\n"
                "Last login: Thu Nov 21 17:00:00 2024 from 192.168.1.10\r\n".encode()
            )
            return
        time.sleep(0.3)  # login's FAIL_DELAY, shortened
        line.write(b"\r\nLogin incorrect\r\n")


def _shell(line: _Line, argv: list[str], user: str, hostname: str, home: str) -> None:
    """Bridge the line to an interactive shell on its own pty until the shell exits."""
    pid, master = pty.fork()
    if pid == 0:  # child: the login shell
        os.chdir(home)
        env = {
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
            "SHELL": argv[0],
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TERM": "vt100",
            "LANG": "en_GB.UTF-8",
            "PS1": f"{user}@{hostname}:~$ ",
        }
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    os.set_blocking(master, False)
    to_shell = bytearray(line.typeahead)  # bytes typed before the shell started
    line.typeahead.clear()
    try:
        while True:
            if to_shell:
                try:
                    del to_shell[: os.write(master, to_shell)]
                except BlockingIOError:
                    pass
            for fd in line.wait([master], 0.05 if to_shell else None):
                if fd == master:
                    try:
                        data = os.read(master, 65536)
                    except BlockingIOError:
                        continue
                    except OSError as exc:  # EIO: the shell exited and closed its pty
                        if exc.errno == errno.EIO:
                            return
                        raise
                    if not data:
                        return
                    line.write(data)
                else:
                    to_shell += _read(line.fd)
    finally:
        line.flush(block=True)
        os.close(master)  # hangs up the shell's session, as a dropped line would
        for _ in range(100):
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _serve(args: argparse.Namespace) -> None:
    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(args.console, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    line = _Line(fd, random.Random(args.seed), args.inject_kernel_logs)
    password = os.environ.get(PASSWORD_ENV, "")
    print("ready", flush=True)
    while True:
        _getty(line, args.user, password, args.hostname)
        _shell(line, json.loads(args.shell), args.user, args.hostname, args.home)


def main() -> None:
    parser = argparse.ArgumentParser(description="board side of a fake serial console (tests only)")
    parser.add_argument("--console", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--hostname", default="raspberrypi")
    parser.add_argument("--home", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shell", required=True, help="JSON argv of the login shell")
    parser.add_argument("--inject-kernel-logs", action="store_true")
    _serve(parser.parse_args())


if __name__ == "__main__":
    main()
