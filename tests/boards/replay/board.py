"""A replay board: an emulated board in its own network namespace, behind a link with a real
delay, whose work waits rather than computes.

    with ReplayBoard(recording_dir) as b:      # answers from a recording (see recording.py)
        b.ssh_config("pi")                       # a Host block for ~/.ssh/config
    ReplayBoard(recording_dir, record=True)      # runs everything for real and records

Each board runs a real OpenSSH sshd as PID 1 of new PID, mount, UTS and network namespaces, with
the board's overlay (tests/boards, via _nsinit.py) and a private tmpfs at STATE_DIR, where its
deploy root DEPLOY_ROOT is (every board has the same paths; none sees another's files). Its link
to this machine is a veth pair with netem on both ends, or, where the kernel has no netem, a pair
of TUN devices joined by delayline.py: one-way DELAY_MS each way, so a round trip is twice that.
root's login shell on the board is shell.sh: the probe, the board's python -c scripts and the
runner are answered from the recording (sleeping for the recorded time), the rest runs in dash.
Everything started for a board dies with it, and with the process that started it (PDEATHSIG):
its namespaces and interfaces vanish with their last process, so nothing is left to clean up.
Root only.

Faults (tests/e2e/test_lab_faults.py, replay/faults.py): set_link(loss=, rate=, down=) makes the
link drop packets, cap its bandwidth or go silent; kill_sshd()/start_sshd() kill the board's sshd
(listener and sessions) and bring it back; hold_runner(s) makes the next run last s longer; reboot() kills every process of the board and starts
sshd again with a new boot_id. The board's PID 1 is _pid1.py, not sshd, so that the board (its
namespaces, its disk) outlives its processes. A reboot keeps the disk: the deploy root's tmpfs
stands for the board's storage (store, releases, `current`, the lab lock, any .partial upload),
which a real reboot keeps; it loses the processes, the connections, the packets on the wire.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from tests.boards.overlay import board_path
from tests.boards.sshd import SSHD, BoardStartError

HERE = Path(__file__).resolve().parent
NSINIT = HERE.parent / "_nsinit.py"
STATE_DIR = "/run/edgedeploy-replay/board"  # a private tmpfs on every board (its mount point exists on this machine too)
DEPLOY_ROOT = f"{STATE_DIR}/deploy"
PORT = 2222  # not 22: known_hosts then says [host]:port, as for every other emulated board
DELAY_MS = 10.0  # one way: a 20 ms round trip, a board across a building's network or a VPN
SUBNET = "10.223"  # board i: host end 10.223.x.(4k+1), board end 10.223.x.(4k+2)
START_TIMEOUT_S = 15.0
_ALLOC_LOCK = Path("/run/edgedeploy-replay/alloc.lock")
_netem: bool | None = None  # does this kernel have sch_netem? (found out on the first board)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _must(argv: list[str]) -> None:
    res = _run(argv)
    if res.returncode != 0:
        raise BoardStartError(f"{shlex.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")


def child_pid(parent: int) -> int | None:
    """A child of `parent` as this machine numbers it (unshare's child: a board's PID 1), from /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                return int(entry)
    return None


class ReplayBoard:
    """Context manager; see the module docstring. `name` is the board type from tests/boards."""

    def __init__(self, recording: Path, *, board: str = "rpi4-4gb", record: bool = False, delay_ms: float = DELAY_MS,
                 python: str = sys.executable) -> None:
        self.board_dir = board_path(board)
        self.name = self.board_dir.name
        self.recording = Path(recording).resolve()
        self.record = record
        self.delay_ms = delay_ms
        self.python = python  # the interpreter edgedeploy is told the board has (its commands are recognised by it)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.port = PORT
        self.index = -1
        self.host = ""  # the board's address
        self.host_side = ""  # this machine's end of the link
        self.link = ""  # "netem" or "delay line"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"edgedeploy-replay-{self.name}-"))
        self.key_path = self.workdir / "id_ed25519"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.misses_path = self.workdir / "misses"
        self.log_path = self.workdir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._delay: subprocess.Popen[bytes] | None = None
        self._pidns = ""
        self.link_control = self.workdir / "link.json"  # the delay line's faults (set_link)
        self.hold_path = self.workdir / "hold_runner"  # hold_runner
        self._faults: dict[str, float | bool] = {"loss": 0.0, "rate": 0.0, "down": False}
        self.host_key_fingerprint = ""
        self._host_key_line = ""

    # --- what tests and benches use -------------------------------------------------------

    def ssh_config(self, alias: str) -> str:
        """A Host block naming this board `alias` (its address, port, key and known_hosts)."""
        return (f"Host {alias}\n    HostName {self.host}\n    Port {self.port}\n    User {self.user}\n"
                f"    IdentityFile {self.key_path}\n    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts_path}\n    StrictHostKeyChecking yes\n")

    def path(self, board_path: str) -> Path:
        """A path on the board as this machine reaches it (through its init's root)."""
        pid = self._init_pid()
        if pid is None:
            raise RuntimeError(f"board {self.name} is not running")
        return Path(f"/proc/{pid}/root") / board_path.lstrip("/")

    def wipe(self) -> None:
        """Empty the deploy root: the next ship is a first contact again (the model is sent)."""
        root = self.path(DEPLOY_ROOT)
        if root.is_dir():
            for entry in root.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def misses(self) -> list[str]:
        """Commands of a replayed kind that the recording did not have (they ran for real)."""
        try:
            return self.misses_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def cpu_s(self) -> float:
        """CPU seconds used on the board so far (see board_cpu_s)."""
        return board_cpu_s([self])

    def link_cpu_s(self) -> float:
        """CPU seconds of the delay line (0 with netem: the kernel's work, not a process's)."""
        if self._delay is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self._delay.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")

    # --- faults -----------------------------------------------------------------------------

    def set_link(self, *, loss: float | None = None, rate: float | None = None, down: bool | None = None) -> None:
        """Change the link's faults (the others stay): loss, a probability per packet each way;
        rate, a cap in bytes/s each way (0: none); down, drop everything (silence, no RST)."""
        for key, value in (("loss", loss), ("rate", rate), ("down", down)):
            if value is not None:
                self._faults[key] = value
        if self.link == "netem":  # the kernel's netem does all three itself (loss 100 %: down)
            f = self._faults
            opts = f"delay {self.delay_ms:g}ms loss {100.0 if f['down'] else float(f['loss']) * 100:g}%"
            opts += f" rate {int(float(f['rate']) * 8)}bit" if f["rate"] else ""
            assert self._proc is not None
            _must(["sh", "-c", f"tc qdisc change dev edr{self.index}h root netem {opts}"])
            _must(["nsenter", "-t", str(self._proc.pid), "-n", "sh", "-c", f"tc qdisc change dev edr{self.index}b root netem {opts}"])
            return
        if self._delay is None:
            raise RuntimeError(f"board {self.name} has no link")
        tmp = self.link_control.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._faults))
        tmp.replace(self.link_control)
        self._delay.send_signal(signal.SIGHUP)
        time.sleep(0.05)  # the delay line reads it between packets: well within this

    def hold_runner(self, seconds: float) -> None:
        """The next runner, once started (its telemetry file exists), waits `seconds` before it
        replays: a long run, for faults that must find it still running."""
        self.hold_path.write_text(f"{seconds:g}\n")

    def pids(self) -> dict[int, str]:
        """The board's processes but its PID 1 (this machine's pid -> command name)."""
        init = self._init_pid()
        out: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != init:
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == self._pidns:
                        out[int(entry)] = Path(f"/proc/{entry}/comm").read_text().strip()
                except OSError:
                    continue
        return out

    def kill_sshd(self) -> int:
        """SIGKILL the board's sshd, its listener and every session (sshd, sshd-session): what a
        crash of sshd or the OOM killer does. The sessions' commands live on, as they would.
        Returns how many processes were killed."""
        killed = 0
        for pid, comm in self.pids().items():
            if comm.startswith("sshd"):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        return killed

    def start_sshd(self) -> None:
        """Bring sshd back (after kill_sshd or reboot) and wait until it answers."""
        pid = self._init_pid()
        if pid is None:
            raise RuntimeError(f"board {self.name} is not running")
        os.kill(pid, signal.SIGUSR1)
        self._wait_ready()

    def reboot(self, down_s: float = 2.0) -> bool:
        """A reboot: the link goes silent, every process of the board dies, its kernel forgets
        every TCP connection, it stays off the network down_s, and comes back with a new boot_id
        (/proc/sys/kernel/random/boot_id, which edgedeploy reads to tell a reboot from a dropped
        link) and sshd. The disk stays. A host whose connection was idle learns of it only when
        it next sends (a keepalive), and gets a RST, as from a board that really rebooted.
        Returns False where the kernel cannot destroy sockets (no INET_DIAG_DESTROY): the killed
        processes' connections then end with a FIN once the link is back, sooner than they would."""
        pid = self._init_pid()
        if pid is None:
            raise RuntimeError(f"board {self.name} is not running")
        self.set_link(down=True)
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        # The killed processes' sockets linger (FIN_WAIT), retransmitting their FIN: a rebooted kernel has none.
        forgot = _run(["nsenter", "-t", str(pid), "-n", "ss", "-K", "-tan"]).returncode == 0
        boot = self.workdir / f"boot_id.{time.monotonic_ns()}"
        boot.write_text(f"{uuid.uuid4()}\n")
        _must(["nsenter", "-t", str(pid), "-m", "mount", "--bind", str(boot), "/proc/sys/kernel/random/boot_id"])
        time.sleep(down_s)
        self.set_link(down=False)
        self.start_sshd()
        return forgot

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> ReplayBoard:
        try:
            self._check_rig()
            self._make_keys()
            self._write_files()
            go_r, go_w = os.pipe()
            try:
                with _link_numbers() as used:  # held until this board's interfaces exist
                    self.index = next(i for i in range(1 << 14) if i not in used)
                    self.host_side, self.host = _addresses(self.index)
                    self._launch(go_r)
                    os.close(go_r)
                    go_r = -1
                    self._wire(self.host_side, self.host)
                os.write(go_w, b"1")
            finally:
                if go_r >= 0:
                    os.close(go_r)
                os.close(go_w)
            self._wait_ready()
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in (self._proc, self._delay):
            if proc is not None and proc.poll() is None:
                # SIGKILL of unshare kills the board's PID 1 (--kill-child), and with it the namespace.
                proc.send_signal(signal.SIGKILL)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._proc = self._delay = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ReplayBoard:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------------

    def _check_rig(self) -> None:
        if os.geteuid() != 0:
            raise BoardStartError("replay boards need root (network, mount and PID namespaces)")
        missing = [t for t in ("ip", "nsenter", "unshare", "setpriv", "ssh-keygen", "md5sum", "dash") if shutil.which(t) is None]
        if not SSHD.exists():
            missing.append(str(SSHD))
        if missing:
            raise BoardStartError(f"replay boards need {', '.join(missing)}: apt-get install -y iproute2 util-linux openssh-server dash")
        if not self.recording.is_dir():
            raise BoardStartError(f"no recording at {self.recording} (record one first: tests/boards/replay/recording.py)")
        Path(STATE_DIR).mkdir(parents=True, exist_ok=True)

    def _make_keys(self) -> None:
        for path in (self.workdir / "host_ed25519", self.key_path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgedeploy-replay-{self.name}", "-f", str(path)],
                           check=True, stdin=subprocess.DEVNULL)
        shutil.copy(f"{self.key_path}.pub", self.workdir / "authorized_keys")
        key_type, blob = (self.workdir / "host_ed25519.pub").read_text().split()[:2]
        self.host_key_fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
        self._host_key_line = f"{key_type} {blob}"

    def _write_files(self) -> None:
        shell = self.workdir / "shell"
        recorder = f"{shlex.quote(sys.executable)} -I {shlex.quote(str(HERE / 'recorder.py'))}"
        text = (HERE / "shell.sh").read_text()
        for k, v in {"@REC@": shlex.quote(str(self.recording)), "@MISSES@": shlex.quote(str(self.misses_path)),
                     "@PY@": shlex.quote(self.python), "@MODE@": "record" if self.record else "replay", "@RECORDER@": recorder,
                     "@HOLD@": shlex.quote(str(self.hold_path))}.items():
            text = text.replace(k, v)
        shell.write_text(text)
        shell.chmod(0o755)
        # root's entry with the replay shell; everyone else as on this machine
        rows = []
        for line in Path("/etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if len(parts) == 7 and parts[0] == self.user:
                parts[6] = str(shell)
            rows.append(":".join(parts))
        (self.workdir / "passwd").write_text("\n".join(rows) + "\n")
        bin_dir = self.board_dir / "bin"
        (self.workdir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 0.0.0.0\nHostKey {self.workdir / 'host_ed25519'}\nPidFile none\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n"
            "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
            f"SetEnv PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            f" EDGEDEPLOY_BOARD={self.board_dir} EDGEDEPLOY_BOARD_BIN={bin_dir}\n")

    def _launch(self, go_fd: int) -> None:
        unshare = ["unshare", "--net", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        sshd = [str(SSHD), "-D", "-e", "-f", str(self.workdir / "sshd_config")]
        pid1 = [sys.executable, "-I", "-S", str(HERE / "_pid1.py"), "--", *sshd]  # outlives sshd (faults)
        overlay = [sys.executable, "-I", "-S", str(NSINIT), str(self.board_dir), "--", *pid1]
        init = [sys.executable, "-I", "-S", str(HERE / "_init.py"), str(go_fd), STATE_DIR, str(self.workdir / "passwd"), "--", *overlay]
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *unshare, *init]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(go_fd,),
                                          start_new_session=True)
        # unshare moves itself into the new network namespace, then forks the board's PID 1.
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                if os.readlink(f"/proc/{self._proc.pid}/ns/net") != own and self._init_pid() is not None:
                    self._pidns = os.readlink(f"/proc/{self._proc.pid}/ns/pid_for_children")
                    return
            except OSError:
                pass
            time.sleep(0.002)
        raise BoardStartError(f"replay board {self.name}: its namespaces did not come up: {self._log()}")

    def _wire(self, a: str, b: str) -> None:
        """The link: veth + netem where the kernel has it, else TUN + delay line."""
        global _netem
        assert self._proc is not None
        pid = str(self._proc.pid)
        h, d = f"edr{self.index}h", f"edr{self.index}b"
        ms = f"{self.delay_ms:g}ms"
        inside = ["nsenter", "-t", pid, "-n"]
        if _netem is not False:
            _must(["ip", "link", "add", h, "type", "veth", "peer", "name", d, "netns", pid])
            res = _run(["tc", "qdisc", "add", "dev", h, "root", "netem", "delay", ms])
            if res.returncode == 0:
                _netem = True
                _must(["ip", "addr", "add", f"{a}/30", "dev", h])
                _must(["ip", "link", "set", h, "up"])
                _must([*inside, "sh", "-c", f"ip link set lo up && ip addr add {b}/30 dev {d} && ip link set {d} up && "
                       f"tc qdisc add dev {d} root netem delay {ms}"])
                self.link = "netem"
                return
            _run(["ip", "link", "del", h])
            if _netem is None and "unknown" not in (res.stderr + res.stdout).lower():
                raise BoardStartError(f"tc netem on {h}: {res.stderr.strip()}")
            _netem = False
        self.link_control.write_text(json.dumps(self._faults))
        self._delay = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", sys.executable, "-I", "-S", str(HERE / "delayline.py"),
                                        h, d, f"{self.delay_ms:g}", str(self.link_control)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
        assert self._delay.stdout is not None
        if self._delay.stdout.readline().strip() != b"ready":
            err = self._delay.stderr.read().decode(errors="replace") if self._delay.stderr else ""
            raise BoardStartError(f"delay line for {self.name} did not start: {err.strip()}")
        _must(["ip", "link", "set", d, "netns", pid])
        _no_ipv6(h)  # no autoconfiguration chatter through the delay line
        _must(["ip", "addr", "add", a, "peer", b, "dev", h])
        _must(["ip", "link", "set", h, "mtu", "65000", "up"])
        _must([*inside, "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{d}/disable_ipv6 2>/dev/null; "
               f"ip link set lo up && ip addr add {b} peer {a} dev {d} && ip link set {d} mtu 65000 up"])
        self.link = "delay line"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                break
            try:  # ready = our sshd's banner
                with socket.create_connection((self.host, self.port), timeout=1) as conn:
                    if conn.recv(8).startswith(b"SSH-"):
                        self.known_hosts_path.write_text(f"[{self.host}]:{self.port} {self._host_key_line}\n")
                        return
            except OSError:
                time.sleep(0.01)
        raise BoardStartError(f"replay board {self.name}: sshd did not answer on {self.host}:{self.port} within "
                              f"{START_TIMEOUT_S:.0f} s: {self._log()}")

    def _init_pid(self) -> int | None:
        """The board's PID 1 as this machine numbers it: unshare's child."""
        if self._proc is None:
            return None
        return child_pid(self._proc.pid)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip() or "no output"
        except OSError:
            return "no output"


def board_cpu_s(boards: list[ReplayBoard]) -> float:
    """CPU seconds the boards used so far: every process of their PID namespaces, with what those
    reaped (a session's processes end in sshd's cumulative times), at clock-tick resolution.
    One pass over /proc for all of them."""
    namespaces = {b._pidns for b in boards if b._pidns}
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") not in namespaces:
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone, or not ours to look at
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def _link_numbers() -> Iterator[set[int]]:
    """The link numbers in use on this machine (interfaces are named by them), under a lock that
    other benches and tests starting boards at the same time wait on."""
    _ALLOC_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _ALLOC_LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield {int(n[3:-1]) for n in os.listdir("/sys/class/net") if n.startswith("edr") and n[3:-1].isdigit()}


def _no_ipv6(interface: str) -> None:
    try:
        Path(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6").write_text("1")
    except OSError:
        pass  # no IPv6 on this kernel: nothing to silence


def _addresses(index: int) -> tuple[str, str]:
    third, fourth = divmod(index, 64)
    return f"{SUBNET}.{third}.{fourth * 4 + 1}", f"{SUBNET}.{third}.{fourth * 4 + 2}"
