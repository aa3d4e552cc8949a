"""A cluster of emulated boards of this machine's kind, for splits across boards (llama.cpp RPC).

    with Cluster(2, memory_limit_bytes=300 << 20) as c:   # boards n0, n1
        c.write_ssh_config(home)                         # Host n0 / n1 blocks in home/.ssh/config
        c.boards[1].address                              # the lab address of n1 (the head reaches it there)

Each board is a real OpenSSH sshd as PID 1 of new network, mount, PID and UTS namespaces (its own
/proc, so pids and /proc/PID/status are the board's), in a memory cgroup of its own
(v1 memory.limit_in_bytes, or v2 memory.max; the probe reads it as the board's memory), with a
private deploy root (a folder of this machine bind-mounted over ~/.local/share/edgedeploy, the
default deploy root, inside: its own, and on disk, as tmpfs pages would count against the cgroup
as memory that cannot be reclaimed). Nothing else is emulated: the CPU, the kernel, python and
llama.cpp are this machine's, so the boards are of this machine's kind.

The lab network: this machine is the switch. Each board has a point-to-point link to it, and
this machine forwards between the links (IPv4 forwarding switched on for those interfaces only,
never machine-wide), so board to board is two links. This kernel has no netem ("Specified qdisc
kind is unknown"), so a link is a pair of TUN devices joined by replay/delayline.py with a one-way
delay and a rate per direction (where netem exists it would be `netem delay D rate R` on a veth
pair; the delay line does the same in user space). Board to board therefore sees twice a link's
delay each way. Everything dies with the process that started it (PDEATHSIG), and the links with
their delay lines. Root only.
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
from pathlib import Path
from types import TracebackType

from tests.boards.replay.board import _must, _no_ipv6, child_pid
from tests.boards.sshd import SSHD, BoardStartError, _remove_cgroup

HERE = Path(__file__).resolve().parent
DELAYLINE = HERE / "replay" / "delayline.py"
SUBNET = "10.224"  # board i: switch end 10.224.0.(4i+1), board end 10.224.0.(4i+2)
LAB_PREFIX = "10.224.0.0/16"
PORT = 2222
LINK_DELAY_MS = 0.15  # one way, each link: board to board 0.3 ms each way (two links)
LINK_RATE_BIT_S = 1e9
START_TIMEOUT_S = 15.0
_ALLOC_LOCK = Path("/run/edgedeploy-cluster/alloc.lock")


class ClusterBoard:
    def __init__(self, name: str, index: int, *, memory_limit_bytes: int | None, delay_ms: float, rate_bit_s: float,
                 workdir: Path) -> None:
        self.name = name
        self.index = index
        self.memory_limit_bytes = memory_limit_bytes
        self.delay_ms = delay_ms
        self.rate_bit_s = rate_bit_s
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.home = Path(pwd.getpwuid(os.getuid()).pw_dir)
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.deploy_root = self.home / ".local" / "share" / "edgedeploy"  # the default deploy root, as the board sees it
        self.board_root = self.workdir / "deploy"  # the board's deploy root, as this machine sees it
        self.board_root.mkdir()
        self.key_path = self.workdir / "id_ed25519"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.log_path = self.workdir / "sshd.log"
        third, fourth = divmod(index, 64)
        self.switch_address = f"{SUBNET}.{third}.{fourth * 4 + 1}"
        self.address = f"{SUBNET}.{third}.{fourth * 4 + 2}"
        self.interface = f"edc{index}b"  # the board's end of its link (inside the board)
        self.switch_interface = f"edc{index}h"
        self.cgroup: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._delay: subprocess.Popen[bytes] | None = None
        self._host_key_line = ""

    def ssh_config(self) -> str:
        return (f"Host {self.name}\n    HostName {self.address}\n    Port {PORT}\n    User {self.user}\n"
                f"    IdentityFile {self.key_path}\n    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts_path}\n    StrictHostKeyChecking yes\n")

    def run(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """One command on the board, in its namespaces (not over ssh: also when sshd is gone)."""
        pid = self.init_pid()
        if pid is None:
            raise RuntimeError(f"board {self.name} is not running")
        return subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "-p", "-u", "sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def peak_memory_bytes(self) -> int:
        """The cgroup's peak usage (v1 memory.max_usage_in_bytes, v2 memory.peak)."""
        for f in ("memory.max_usage_in_bytes", "memory.peak"):
            if self.cgroup is not None and (self.cgroup / f).exists():
                return int((self.cgroup / f).read_text())
        return 0

    def link_bytes(self) -> tuple[int, int]:
        """(bytes received, bytes sent) by the board on its link, from this machine's end."""
        base = Path(f"/sys/class/net/{self.switch_interface}/statistics")
        return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())

    def link_cpu_s(self) -> float:
        if self._delay is None:
            return 0.0
        fields = Path(f"/proc/{self._delay.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._keys()
        self._config()
        self._cgroup()
        self._launch()
        self._wire()
        self._wait_ready()

    def stop(self) -> None:
        for proc in (self._proc, self._delay):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # unshare --kill-child: the board's PID 1 and everything on it
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._proc = self._delay = None
        if self.cgroup is not None:
            _remove_cgroup(self.cgroup)
            self.cgroup = None

    def init_pid(self) -> int | None:
        if self._proc is None:
            return None
        return child_pid(self._proc.pid)

    def _keys(self) -> None:
        for path in (self.workdir / "host_ed25519", self.key_path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgedeploy-cluster-{self.name}", "-f", str(path)],
                           check=True, stdin=subprocess.DEVNULL)
        shutil.copy(f"{self.key_path}.pub", self.workdir / "authorized_keys")
        key_type, blob = (self.workdir / "host_ed25519.pub").read_text().split()[:2]
        self.host_key_fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
        self._host_key_line = f"{key_type} {blob}"

    def _config(self) -> None:
        venv_bin = Path(sys.executable).parent
        (self.workdir / "sshd_config").write_text(
            f"Port {PORT}\nListenAddress 0.0.0.0\nHostKey {self.workdir / 'host_ed25519'}\nPidFile none\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\nMaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
            f"SetEnv PATH={venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")

    def _cgroup(self) -> None:
        if self.memory_limit_bytes is None:
            return
        limit = str(self.memory_limit_bytes)
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
        name = f"edgedeploy-cluster-{os.getpid()}-{self.name}"
        if "memory" in _read(v2 / "cgroup.controllers").split():
            group = v2 / name
            group.mkdir()
            (group / "memory.max").write_text(limit)
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        elif (v1 / "memory.limit_in_bytes").exists():
            group = v1 / name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(limit)
            if (group / "memory.memsw.limit_in_bytes").exists():
                (group / "memory.memsw.limit_in_bytes").write_text(limit)
        else:
            raise BoardStartError("no writable memory cgroup (v2 memory.max or v1 memory.limit_in_bytes)")
        self.cgroup = group

    def _launch(self) -> None:
        if not SSHD.exists() or shutil.which("nsenter") is None:
            raise BoardStartError("cluster boards need openssh-server and util-linux (scripts/setup.sh --test installs them)")
        sshd = [str(SSHD), "-D", "-e", "-f", str(self.workdir / "sshd_config")]
        # inside: the private deploy root, the board's hostname, then sshd as PID 1
        self.deploy_root.mkdir(parents=True, exist_ok=True)  # a bind mount needs its mount point
        # and this machine's shell start-up files (pyenv shims first on PATH) replaced by an empty one
        neutral = self.workdir / "neutral"
        neutral.write_text("")
        rc = " && ".join(f'mount --bind "$4" {shlex.quote(str(f))}' for f in (self.home / ".bashrc", self.home / ".profile") if f.is_file()) or "true"
        inner = ["sh", "-c", f'mount --bind "$1" "$2" && {rc} && hostname "$3" && shift 4 && exec "$@"', "sh",
                 str(self.board_root), str(self.deploy_root), self.name, str(neutral), *sshd]
        unshare = ["unshare", "--net", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private"]
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *unshare, *inner]
        if self.cgroup is not None:  # join the cgroup before exec: every process of the board is inside it
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"), *argv]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self._proc.poll() is None:
            pid = self.init_pid()
            try:
                if pid is not None and os.readlink(f"/proc/{pid}/ns/net") != own:
                    return
            except OSError:
                pass
            time.sleep(0.005)
        raise BoardStartError(f"cluster board {self.name}: its namespaces did not come up: {_text(self.log_path)}")

    def _wire(self) -> None:
        pid = self.init_pid()
        assert pid is not None
        h, d = self.switch_interface, self.interface
        control = self.workdir / f"{self.name}-link.json"  # delayline.py's control file: the rate in bytes/s
        control.write_text(json.dumps({"rate": self.rate_bit_s / 8}))
        self._delay = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", sys.executable, "-I", "-S", str(DELAYLINE), h, d,
                                        f"{self.delay_ms:g}", str(control)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert self._delay.stdout is not None
        if self._delay.stdout.readline().strip() != b"ready":
            err = self._delay.stderr.read().decode(errors="replace") if self._delay.stderr else ""
            raise BoardStartError(f"delay line for {self.name} did not start: {err.strip()}")
        _must(["ip", "link", "set", d, "netns", str(pid)])
        _no_ipv6(h)
        _must(["ip", "addr", "add", self.switch_address, "peer", self.address, "dev", h])
        _must(["ip", "link", "set", h, "mtu", "65000", "up"])
        # this machine forwards between the boards' links, on those interfaces only
        Path(f"/proc/sys/net/ipv4/conf/{h}/forwarding").write_text("1")
        _must(["nsenter", "-t", str(pid), "-n", "sh", "-c",
               f"echo 1 > /proc/sys/net/ipv6/conf/{d}/disable_ipv6 2>/dev/null; ip link set lo up && "
               f"ip addr add {self.address} peer {self.switch_address} dev {d} && ip link set {d} mtu 65000 up && "
               f"ip route add {LAB_PREFIX} via {self.switch_address} dev {d}"])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                break
            try:
                with socket.create_connection((self.address, PORT), timeout=1) as conn:
                    if conn.recv(8).startswith(b"SSH-"):
                        self.known_hosts_path.write_text(f"[{self.address}]:{PORT} {self._host_key_line}\n")
                        return
            except OSError:
                time.sleep(0.01)
        raise BoardStartError(f"cluster board {self.name}: sshd did not answer on {self.address}:{PORT}: {_text(self.log_path)}")


class Cluster:
    """Boards n0..n<count-1>; see the module docstring."""

    def __init__(self, count: int, *, memory_limit_bytes: int | None = None, delay_ms: float = LINK_DELAY_MS,
                 rate_bit_s: float = LINK_RATE_BIT_S) -> None:
        if os.geteuid() != 0:
            raise BoardStartError("cluster boards need root (network, mount and PID namespaces, cgroups)")
        self.workdir = Path(tempfile.mkdtemp(prefix="edgedeploy-cluster-"))
        self.count = count
        self.memory_limit_bytes = memory_limit_bytes
        self.delay_ms = delay_ms
        self.rate_bit_s = rate_bit_s
        self.boards: list[ClusterBoard] = []

    def __enter__(self) -> Cluster:
        try:
            _ALLOC_LOCK.parent.mkdir(parents=True, exist_ok=True)
            with _ALLOC_LOCK.open("a") as lock:  # link numbers: other rigs starting now wait
                fcntl.flock(lock, fcntl.LOCK_EX)
                used = {int(n[3:-1]) for n in os.listdir("/sys/class/net") if n.startswith("edc") and n[3:-1].isdigit()}
                free = (i for i in range(1 << 14) if i not in used)
                for i in range(self.count):
                    b = ClusterBoard(f"n{i}", next(free), memory_limit_bytes=self.memory_limit_bytes, delay_ms=self.delay_ms,
                                     rate_bit_s=self.rate_bit_s, workdir=self.workdir)
                    self.boards.append(b)
                    b.start()
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for b in self.boards:
            b.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def write_ssh_config(self, home: Path) -> None:
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        (ssh / "config").write_text("".join(b.ssh_config() for b in self.boards))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _text(path: Path) -> str:
    return _read(path).strip() or "no output"
