"""Host key checking for the SSH transport: known_hosts in, refusals and accept-new out.

paramiko (and fabric, which installs AutoAddPolicy) trust an unknown host silently. Here an
unknown key is refused with its fingerprint unless the user opted into accept-new, and a changed
key is always refused, as OpenSSH's StrictHostKeyChecking=accept-new does.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import paramiko

from toolchain.core.errors import TargetError

DEFAULT_USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
ACCEPT_HINT = "check the fingerprint, then re-run with --accept-new-host-key"


def host_key_name(host: str, port: int) -> str:
    """The name known_hosts files use: bare host on port 22, else [host]:port."""
    return host if port == 22 else f"[{host}]:{port}"


def key_label(key: paramiko.PKey) -> str:
    """'ED25519 key SHA256:...', the way ssh prints a key it asks about."""
    return f"{key.algorithm_name} key {key.fingerprint}"


def known_hosts_files(user_known_hosts: str | None, user: str, home: str | None = None) -> list[Path]:
    """~/.ssh/known_hosts plus the UserKnownHostsFile list from ssh config (deduplicated, in order).

    The first entry is where accept-new records keys: the config's file when it names one, so a
    project-specific known_hosts stays self-contained.
    """
    home = home or os.path.expanduser("~")
    out: list[Path] = []
    configured = shlex.split(user_known_hosts) if user_known_hosts else []
    for raw in [*configured, DEFAULT_USER_KNOWN_HOSTS]:
        if raw.lower() == "none":
            continue
        expanded = raw.replace("%d", home).replace("%u", user).replace("%%", "%")
        if expanded.startswith("~"):
            expanded = home + expanded[1:]
        path = Path(expanded)
        if path not in out:
            out.append(path)
    return out


def load_known_hosts(client: paramiko.SSHClient, files: Sequence[Path]) -> None:
    """Load every readable known_hosts file (and the global one) into the client's checked set."""
    for path in [*files, Path(GLOBAL_KNOWN_HOSTS)]:
        if path.is_file():
            try:
                client.load_system_host_keys(str(path))
            except (OSError, paramiko.SSHException):
                continue  # an unreadable or odd file must not block the others


def file_holding(name: str, files: Sequence[Path]) -> Path | None:
    """The known_hosts file that has an entry for name (for the 'changed key' hint)."""
    for path in [*files, Path(GLOBAL_KNOWN_HOSTS)]:
        if not path.is_file():
            continue
        keys = paramiko.HostKeys()
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException):
            continue
        if keys.lookup(name) is not None:
            return path
    return None


def append_known_host(path: Path, name: str, key: paramiko.PKey, *, hashed: bool) -> None:
    """Add one line for name to path (created 0600 in a 0700 directory if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = paramiko.HostKeys.hash_host(name) if hashed else name
    line = f"{entry} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a hand-edited file may lack its final newline
        os.write(fd, line.encode())  # one write: concurrent appenders do not interleave lines
    finally:
        os.close(fd)


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Called by paramiko only for a host with no known key; known-but-different never gets here."""

    def __init__(self, *, accept_new: bool, record_to: Path, hashed: bool) -> None:
        self.accept_new = accept_new
        self.record_to = record_to
        self.hashed = hashed
        self.recorded: list[str] = []

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise TargetError(f"{hostname}: host key not in known_hosts ({key_label(key)})", ACCEPT_HINT)
        try:
            append_known_host(self.record_to, hostname, key, hashed=self.hashed)
        except OSError as exc:
            raise TargetError(
                f"{hostname}: cannot record the new host key in {self.record_to}: {exc.strerror or exc}",
                "make the known_hosts file writable, or add the key yourself with ssh-keyscan",
            ) from exc
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.recorded.append(f"{hostname} {key_label(key)}")


def changed_key_error(name: str, key: paramiko.PKey, files: Sequence[Path]) -> TargetError:
    where = file_holding(name, files)
    return TargetError(
        f"{name}: HOST KEY CHANGED: the host now offers {key_label(key)}, which does not match known_hosts"
        + (f" ({where})" if where else ""),
        "someone may be intercepting the connection; if the board was re-installed, remove the old line"
        f" with: ssh-keygen -R '{name}'" + (f" -f {shlex.quote(str(where))}" if where else "")
        + ", then connect again",
    )
