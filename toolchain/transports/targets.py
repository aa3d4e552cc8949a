"""Resolve what the user typed as a target into a TargetSpec.

Forms: a name from targets/*.yaml; `local`; `user@host[:port]`, `ssh:host`, or a plain host that
is an IP, a dotted name or a Host alias in ~/.ssh/config; `adb` / `adb:SERIAL`;
`serial:/dev/ttyUSB0[@115200]`. A plain word that is none of these is refused with the known
names listed, because a typo in a lab target should not turn into an SSH attempt to a stranger.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from toolchain.core.config import field, load_yaml
from toolchain.core.errors import BadInputError
from toolchain.core.nouns import TargetSpec
from toolchain.core.paths import targets_dir

KINDS = ("local", "ssh", "adb", "serial")


def known_targets(root: Path | None = None) -> dict[str, Path]:
    root = root or targets_dir()
    return {p.stem: p for p in sorted(root.glob("*.yaml")) if not p.stem.endswith(".example")}


def load_target_file(path: Path) -> TargetSpec:
    data = load_yaml(path)
    where = str(path)
    kind = field(data, "transport", str, where)
    if kind not in KINDS:
        raise BadInputError(f"{where}: key 'transport' is {kind!r}", f"use one of: {', '.join(KINDS)}")
    host_key = field(data, "host_key", str, where, optional=True, default="strict")
    if host_key not in ("strict", "accept-new"):
        raise BadInputError(f"{where}: key 'host_key' is {host_key!r}", "use strict or accept-new")
    return TargetSpec(
        name=field(data, "name", str, where, optional=True, default=path.stem),
        kind=kind,
        host=field(data, "host", str, where, optional=True),
        user=field(data, "user", str, where, optional=True),
        port=field(data, "port", int, where, optional=True),
        adb_serial=field(data, "serial", str, where, optional=True),
        device=field(data, "device", str, where, optional=True),
        baud=field(data, "baud", int, where, optional=True),
        deploy_dir=field(data, "deploy_dir", str, where, optional=True),
        python=field(data, "python", str, where, optional=True),
        board=field(data, "board", str, where, optional=True),
        host_key=host_key,
        login_user=field(data, "login_user", str, where, optional=True),
        login_password_env=field(data, "login_password_env", str, where, optional=True),
        source=where,
    )


def resolve_target(text: str, root: Path | None = None, ssh_config: Path | None = None) -> TargetSpec:
    text = text.strip()
    if not text:
        raise BadInputError("empty target", "name a target from 'edgedeploy targets', or user@host")
    known = known_targets(root)
    if text in known:
        return load_target_file(known[text])
    if text == "local":
        return TargetSpec(name="local", kind="local", source="built-in")
    if text == "adb" or text.startswith("adb:"):
        serial = text[4:] or None
        return TargetSpec(name=text, kind="adb", adb_serial=serial, source="command line")
    if text.startswith("serial:"):
        return _serial_spec(text)
    if text.startswith("ssh:"):
        text = text[4:]
        return _ssh_spec(text)
    if "@" in text or _looks_like_host(text) or _in_ssh_config(text, ssh_config):
        return _ssh_spec(text)
    names_list = sorted({*known, "local"})
    close = difflib.get_close_matches(text, names_list, n=3)
    names = ", ".join(names_list)
    raise BadInputError(
        f"unknown target {text!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""),
        f"known targets: {names}; for an SSH host use user@host or ssh:{text}",
    )


def _serial_spec(text: str) -> TargetSpec:
    m = re.fullmatch(r"serial:([^@]+)(?:@(\d+))?", text)
    if not m:
        raise BadInputError(f"bad serial target {text!r}", "use serial:/dev/ttyUSB0 or serial:/dev/ttyUSB0@115200")
    return TargetSpec(name=text, kind="serial", device=m.group(1), baud=int(m.group(2) or 115200), source="command line")


def _ssh_spec(text: str) -> TargetSpec:
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[0-9a-fA-F:]+\]|[^@:\s\[\]]+)(?::(\d{1,5}))?", text)
    if not m:
        raise BadInputError(f"bad SSH target {text!r}", "use user@host, user@host:port or host")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise BadInputError(f"bad SSH port in {text!r}", "ports are 1-65535")
    return TargetSpec(name=text, kind="ssh", user=m.group(1), host=m.group(2).strip("[]"), port=port, source="command line")


def _looks_like_host(text: str) -> bool:
    return "." in text or ":" in text or re.fullmatch(r"[0-9.]+", text) is not None


def _in_ssh_config(name: str, path: Path | None) -> bool:
    path = path or Path.home() / ".ssh" / "config"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0].lower() == "host" and name in parts[1:]:
            return True
    return False
