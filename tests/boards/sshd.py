"""A real OpenSSH sshd on 127.0.0.1 whose every session runs on an emulated board.

sshd runs as PID 1 of the board's namespaces (overlay.namespace_argv), so sessions see the board's
files and tools, and stopping the board kills everything started on it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.boards.overlay import board_path, namespace_argv

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 10.0
SETUP_HINT = "run scripts/setup.sh (it installs openssh-server), or: apt-get install -y openssh-server"


class BoardStartError(RuntimeError):
    pass


class SshBoard:
    """Context manager: `with SshBoard("rpi4-4gb") as b: subprocess.run(b.ssh_argv("uname -m"))`.

    The board dies with the thread that started it (PR_SET_PDEATHSIG), so a crashed test run
    leaves no sshd behind; start it from a thread that outlives it.
    """

    host = "127.0.0.1"

    def __init__(self, board: str | Path, *, port: int | None = None, memory_limit_bytes: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.env = dict(env or {})  # more variables every session gets (sshd's SetEnv), e.g. a GPU driver's switch
        self.board_dir = board_path(board)
        self.name = self.board_dir.name
        self.user = _current_user()
        self.port = port or 0
        self.memory_limit_bytes = memory_limit_bytes
        self.memory_limit_applied = False
        self.memory_cgroup: Path | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"edgedeploy-board-{self.name}-"))
        self.key_path = self.workdir / "id_ed25519"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.ssh_config_path = self.workdir / "ssh_config"
        self.log_path = self.workdir / "sshd.log"
        self.host_key_fingerprint = ""
        self._host_key_line = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def ssh_argv(self, command: str | None = None) -> list[str]:
        """ssh client argv for this board (BatchMode, its key and known_hosts only)."""
        opts = {"BatchMode": "yes", "IdentitiesOnly": "yes", "StrictHostKeyChecking": "yes", "UserKnownHostsFile": self.known_hosts_path}
        argv = ["ssh", "-F", "none", *(x for k, v in opts.items() for x in ("-o", f"{k}={v}"))]
        argv += ["-i", str(self.key_path), "-p", str(self.port), f"{self.user}@{self.host}"]
        return argv + ([command] if command is not None else [])

    def run(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run one command on the board over ssh; output captured as text."""
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SshBoard:
        try:
            if not SSHD.exists() or not shutil.which("ssh-keygen"):
                raise BoardStartError(f"OpenSSH server not installed ({SSHD} missing): {SETUP_HINT}")
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
            self._make_keys()
            fixed_port = self.port != 0
            tries = 1 if fixed_port else 3  # a random free port can be taken before sshd binds it
            for attempt in range(1, tries + 1):
                if not fixed_port:
                    self.port = _free_port()
                self._write_configs()
                try:
                    self._launch()
                    return self
                except BoardStartError as e:
                    if attempt == tries or "Address already in use" not in str(e):
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Kill sshd and, with it, every process of the board (they share its PID namespace)."""
        self._proc_kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_connections(self) -> int:
        """SIGKILL every per-connection sshd (as if the network dropped); the listener stays up.

        Returns how many processes were killed. What the sessions started is left running: it
        finds its connection gone (EOF, SIGPIPE), as on a board whose network dropped.
        """
        if self._proc is None:
            return 0
        listener = self._sshd_pid(self._proc)
        tree = _process_tree()
        victims = [pid for pid in _descendants(listener, tree) if tree[pid][1] == "sshd"] if listener else []
        for pid in victims:
            _kill(pid)
        deadline = time.monotonic() + 2
        while victims and time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in victims):
            time.sleep(0.01)
        return len(victims)

    def __enter__(self) -> SshBoard:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _make_keys(self) -> None:
        for path in (self.workdir / "host_ed25519", self.key_path):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgedeploy-{self.name}", "-f", str(path)], check=True, stdin=subprocess.DEVNULL
            )
        shutil.copy(f"{self.key_path}.pub", self.workdir / "authorized_keys")
        key_type, blob = (self.workdir / "host_ed25519.pub").read_text().split()[:2]
        digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
        self.host_key_fingerprint = f"SHA256:{digest}"
        self._host_key_line = f"{key_type} {blob}"

    def _write_configs(self) -> None:
        bin_dir = self.board_dir / "bin"
        sftp = Path("/usr/lib/openssh/sftp-server")
        (self.workdir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress {self.host}\n"
            f"HostKey {self.workdir / 'host_ed25519'}\nPidFile none\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            # No PAM: nothing to log in to but the key, and pam_env would rewrite PATH.
            "UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n"
            # Tests open many connections at once (pools, multiplexing): do not throttle them.
            "MaxStartups 100\nMaxSessions 100\nLogLevel INFO\n"
            f"Subsystem sftp {sftp if sftp.exists() else 'internal-sftp'}\n"
            # Sessions get sshd's default PATH; the board's tools go first.
            f"SetEnv PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            f" EDGEDEPLOY_BOARD={self.board_dir} EDGEDEPLOY_BOARD_BIN={bin_dir}"
            + "".join(f" {k}={v}" for k, v in sorted(self.env.items())) + "\n"
        )
        self.known_hosts_path.write_text(f"[{self.host}]:{self.port} {self._host_key_line}\n")
        self.ssh_config_path.write_text(
            f"Host {self.name}\n    HostName {self.host}\n    Port {self.port}\n    User {self.user}\n"
            f"    IdentityFile {self.key_path}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts_path}\n    StrictHostKeyChecking yes\n"
        )

    def _launch(self) -> None:
        argv = namespace_argv(self.board_dir, [str(SSHD), "-D", "-e", "-f", str(self.workdir / "sshd_config")], pid_namespace=True)
        procs_file = self._memory_cgroup_procs()
        if procs_file is not None:  # join the cgroup before exec, so every child is inside it
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs_file), *argv]
        # If the test process dies without stop(), take the board down with it.
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:  # ready = our sshd's banner (something else may be listening on the port)
                with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                    if conn.recv(8).startswith(b"SSH-") and self._proc.poll() is None:
                        return
            except OSError:
                time.sleep(0.01)
        self._proc_kill()
        log_text = self.log_path.read_text(errors="replace").strip()
        where = f"{self.host}:{self.port}"
        raise BoardStartError(f"sshd for board {self.name} did not accept connections on {where} within {START_TIMEOUT_S:.0f} s; its stderr:\n{log_text}")

    def _proc_kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # Killing sshd, PID 1 of the board, kills the whole namespace; unshare then exits.
            for pid in (self._sshd_pid(proc), proc.pid):
                if pid and proc.poll() is None:
                    _kill(pid)
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
        if self.memory_cgroup is not None:
            _remove_cgroup(self.memory_cgroup)
            self.memory_cgroup, self.memory_limit_applied = None, False

    def _memory_cgroup_procs(self) -> Path | None:
        """Create the board's memory cgroup (v2, else v1); None when none is writable."""
        if self.memory_limit_bytes is None:
            return None
        name = f"edgedeploy-{self.name}-{self.port}"
        limit = str(self.memory_limit_bytes)
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
        group = v2 / name
        try:
            if "memory" in _read(v2 / "cgroup.controllers").split():
                if "memory" not in _read(v2 / "cgroup.subtree_control").split():
                    (v2 / "cgroup.subtree_control").write_text("+memory")
                group.mkdir(exist_ok=True)
                (group / "memory.max").write_text(limit)
                if (group / "memory.swap.max").exists():
                    (group / "memory.swap.max").write_text("0")
            elif (v1 / "memory.limit_in_bytes").exists():
                group = v1 / name
                group.mkdir(exist_ok=True)
                (group / "memory.limit_in_bytes").write_text(limit)
                if (group / "memory.memsw.limit_in_bytes").exists():  # memory+swap = memory: no swap
                    (group / "memory.memsw.limit_in_bytes").write_text(limit)
            else:
                return None
        except OSError:
            _remove_cgroup(group)
            return None
        self.memory_cgroup, self.memory_limit_applied = group, True
        return group / "cgroup.procs"

    @staticmethod
    def _sshd_pid(proc: subprocess.Popen[bytes]) -> int | None:
        """Host pid of the listening sshd: the first sshd below our launcher chain."""
        tree = _process_tree()
        for pid in [proc.pid, *_descendants(proc.pid, tree)]:
            if tree.get(pid, (0, ""))[1] == "sshd":
                return pid
        return None


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _process_tree() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every process (this kernel has no /proc/PID/task/*/children)."""
    tree: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            tree[int(entry)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), comm)
    return tree


def _descendants(root: int, tree: dict[int, tuple[int, str]]) -> list[int]:
    out: list[int] = []
    frontier = [root]
    while frontier:
        children = [pid for pid, (ppid, _) in tree.items() if ppid in frontier]
        out += children
        frontier = children
    return out


def _remove_cgroup(group: Path) -> None:
    deadline = time.monotonic() + 5
    while True:
        for pid in _read(group / "cgroup.procs").split():
            _kill(int(pid))
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
