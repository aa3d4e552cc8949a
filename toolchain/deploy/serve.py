"""Leave a runner serving on the target: a systemd service where systemd runs, else the launcher's
supervisor loop (restart on crash, pid files under <deploy root>/serve/).

What runs is always <deploy root>/current/run.sh, so a ship or a rollback followed by `restart`
serves the new current release. State of record: <deploy root>/serve/serve.json.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Required, TypedDict

from toolchain.core.errors import BadInputError, TargetError
from toolchain.core.serde import typed_dict_from
from toolchain.deploy.package import environment
from toolchain.transports.base import Transport

UNIT = "edgedeploy-runner.service"
READY_TIMEOUT_S = 600.0  # loading a multi-GB model from an SD card takes minutes
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")

# Runs on the target with its python: wait until the server answers a completion, in one round
# trip. argv: host port timeout_s pidfile ("" when systemd supervises).
_HEALTH = r"""
import json, os, sys, time, urllib.request
host, port, limit, pidfile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
url = "http://%s:%d/v1/completions" % ("[%s]" % host if ":" in host else host, port)
body = json.dumps({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}).encode()
start, err = time.monotonic(), "no answer"
while time.monotonic() - start < limit:
    if pidfile and not os.path.exists(pidfile):
        err = "the supervisor gave up: the server keeps crashing"
        break
    try:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=max(5.0, limit - (time.monotonic() - start))) as r:
            doc = json.load(r)
        text = doc["choices"][0]["text"]
        print(json.dumps({"ok": True, "text": text, "model": doc.get("model"), "seconds": time.monotonic() - start}))
        sys.exit(0)
    except Exception as exc:
        err = "%s: %s" % (type(exc).__name__, exc)
        time.sleep(0.5)
print(json.dumps({"ok": False, "error": err, "seconds": time.monotonic() - start}))
"""

_PORT_FREE = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam)
try:
    s.bind((host, port))
except OSError as exc:
    print(exc)
    sys.exit(1)
"""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # loopback unless asked: the server has no authentication
    port: int = 8080
    ready_timeout_s: float = READY_TIMEOUT_S

    def checked(self) -> ServeOptions:
        if not _HOST.fullmatch(self.host):
            raise BadInputError(f"--serve-host {self.host!r} is not a host address", "e.g. 127.0.0.1 or 0.0.0.0")
        if not 0 < self.port < 65536:
            raise BadInputError(f"--serve-port {self.port} is outside 1-65535", "e.g. 8080")
        return self


@dataclass(frozen=True)
class ServeResult:
    ok: bool
    manager: str  # systemd | systemd-user | supervisor
    host: str
    port: int
    pid: int | None
    answer: str | None
    seconds: float
    error: str | None = None
    log_tail: str = ""


class ServeState(TypedDict, total=False):
    """<deploy root>/serve/serve.json, as _write_state writes it (empty: nothing serving)."""

    manager: str  # systemd | systemd-user | supervisor
    host: str
    port: int
    release: str
    supervisor_pid: int | None
    python: str
    unit: str | None
    started: float


class Health(TypedDict, total=False):
    """The line _HEALTH prints: an answer, or the last error before it gave up."""

    ok: Required[bool]
    text: str
    model: str | None
    seconds: float
    error: str


@dataclass
class Server:
    transport: Transport
    root: str
    python: str

    @property
    def state_dir(self) -> str:
        return f"{self.root}/serve"

    def sh(self, script: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.transport.run(["sh", "-c", script, "sh", *args], timeout=timeout, check=check).stdout

    # --- what manages the server ---

    def manager(self) -> str:
        """systemd when it is PID 1 and answers (the user manager for non-root), else our supervisor."""
        out = self.sh(
            # /run/systemd/system exists iff systemd is PID 1 (sd_booted); a user manager must answer too
            'if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then '
            '  if [ "$(id -u)" = 0 ]; then echo systemd; exit 0; '
            '  elif systemctl --user show-environment >/dev/null 2>&1; then echo systemd-user; exit 0; fi; '
            'fi; echo supervisor', check=False).strip()
        return out if out in ("systemd", "systemd-user") else "supervisor"

    def state(self) -> ServeState:
        text = self.sh('cat "$1/serve.json" 2>/dev/null || true', self.state_dir)
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError:
            return {}
        st = (typed_dict_from(ServeState, doc) or {}) if isinstance(doc, dict) else {}
        if "port" in st and not 0 < st["port"] < 65536:
            del st["port"]  # a port no server can hold: as if it had not been written
        return st

    # --- start / stop ---

    def stop(self) -> None:
        """Stop whatever edgedeploy left serving here (either manager)."""
        st = self.state()
        mgr = st.get("manager")
        if mgr in ("systemd", "systemd-user"):
            self.transport.run(_systemctl(mgr, "stop", UNIT), timeout=120, check=False)
        launcher = f"{self.root}/current/run.sh"
        self.sh('[ -f "$1" ] && sh "$1" stop; true', launcher, timeout=60, check=False)
        self.sh('rm -f "$1/serve.json"', self.state_dir, check=False)

    def start(self, opts: ServeOptions, release_id: str) -> ServeResult:
        """Serve the current release and wait until it answers a completion."""
        opts = opts.checked()
        self.stop()
        mgr = self.manager()
        self.sh('mkdir -p "$1"', self.state_dir)
        if mgr == "supervisor":
            free = self.transport.run([self.python, "-c", _PORT_FREE, opts.host, str(opts.port)], timeout=30, check=False)
            if not free.ok:
                raise TargetError(f"{self.transport.display}: port {opts.port} on {opts.host} is taken ({free.stdout.strip() or free.tail()})",
                                  "pick another with --serve-port, or stop what listens there")
            out = self.transport.run(["sh", f"{self.root}/current/run.sh", "start", "--host", opts.host, "--port", str(opts.port)],
                                     timeout=60, env={"EDGEDEPLOY_PYTHON": self.python})
            pid: int | None = int(out.stdout.split()[-1]) if out.stdout.split() and out.stdout.split()[-1].isdigit() else None
        else:
            self._install_unit(mgr, opts)
            pid = None
        self._write_state(mgr, opts, release_id, pid)
        health = self.check(opts, mgr)
        tail = "" if health.get("ok") else self.log_tail(mgr)
        return ServeResult(bool(health.get("ok")), mgr, opts.host, opts.port, pid or self.pid(mgr),
                           health.get("text"), float(health.get("seconds") or 0.0), health.get("error"), tail)

    def restart_if_serving(self, release_id: str) -> ServeResult | None:
        """After a rollback: serve the new current release the way the old one was served."""
        st = self.state()
        if not st:
            return None
        return self.start(ServeOptions(host=str(st.get("host", "127.0.0.1")), port=int(st.get("port", 8080))), release_id)

    def check(self, opts: ServeOptions, mgr: str) -> Health:
        pidfile = f"{self.state_dir}/serve.pid" if mgr == "supervisor" else ""
        res = self.transport.run([self.python, "-c", _HEALTH, opts.host, str(opts.port), f"{opts.ready_timeout_s:g}", pidfile],
                                 timeout=opts.ready_timeout_s + 60, check=False)
        try:
            doc = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "error": f"health check did not run: {res.tail()}"}
        health = typed_dict_from(Health, doc) if isinstance(doc, dict) else None
        return health if health is not None else {"ok": False, "error": "bad health check output"}

    def pid(self, mgr: str) -> int | None:
        if mgr == "supervisor":
            out = self.sh('p=$(cat "$1/server.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; true', self.state_dir).strip()
        else:
            out = self.transport.run([*_systemctl(mgr, "show", "-p", "MainPID", "--value", UNIT)], timeout=30, check=False).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def log_tail(self, mgr: str, lines: int = 20) -> str:
        if mgr == "supervisor":
            return self.sh('tail -n "$2" "$1/serve.log" 2>/dev/null || true', self.state_dir, str(lines), check=False)
        user = ["--user"] if mgr == "systemd-user" else []
        return self.transport.run(["journalctl", *user, "-u", UNIT, "-n", str(lines), "--no-pager"], timeout=30, check=False).stdout

    # --- internals ---

    def _install_unit(self, mgr: str, opts: ServeOptions) -> None:
        unit_dir = "/etc/systemd/system" if mgr == "systemd" else posixpath.join(self.transport.home(), ".config/systemd/user")
        text = render_unit(self.root, self.python, opts.host, opts.port, wanted_by="multi-user.target" if mgr == "systemd" else "default.target")
        self.transport.run(["sh", "-c", 'mkdir -p "$1" && cat > "$1/$2"', "sh", unit_dir, UNIT], stdin=text.encode(), timeout=30)
        for argv in (_systemctl(mgr, "daemon-reload"), _systemctl(mgr, "enable", UNIT), _systemctl(mgr, "restart", UNIT)):
            self.transport.run(argv, timeout=120)
        if mgr == "systemd-user":  # without lingering, a user unit stops at logout and waits for a login after boot
            self.transport.run(["loginctl", "enable-linger"], timeout=30, check=False)

    def _write_state(self, mgr: str, opts: ServeOptions, release_id: str, pid: int | None) -> None:
        doc = {"manager": mgr, "host": opts.host, "port": opts.port, "release": release_id, "supervisor_pid": pid,
               "python": self.python, "unit": UNIT if mgr != "supervisor" else None, "started": time.time()}
        self.transport.run(["sh", "-c", 'cat > "$1/serve.json"', "sh", self.state_dir], stdin=json.dumps(doc).encode(), timeout=30)


def _systemctl(mgr: str, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if mgr == "systemd-user" else []), *args]


def systemd_quote(value: object) -> str:
    """One systemd command-line word: double-quoted, with specifiers (%) and $ escaped."""
    text = str(value)
    if any(ch in text for ch in "\n\r\0"):
        raise BadInputError(f"{text!r} cannot go into a systemd unit", "use a path without newlines")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def render_unit(root: str, python: str, host: str, port: int, *, wanted_by: str = "multi-user.target") -> str:
    env = environment()
    env.filters["systemd_quote"] = systemd_quote
    return env.get_template("edgedeploy-runner.service.j2").render(
        deploy_root=systemd_quote(root)[1:-1], launcher=f"{root}/current/run.sh", python=python, host=host, port=int(port),
        wanted_by=wanted_by)
