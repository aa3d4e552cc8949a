"""A lock on the board itself, so two CI jobs never deploy to one board at once.

The lock is a directory under the board's deploy root, created with `mkdir` (atomic on every
POSIX filesystem, busybox and toybox included) and holding owner.json: who, which CI job, and an
expiry in the *board's* clock (`date +%s` there), so clock skew between CI hosts cannot matter.
A heartbeat thread pushes the expiry forward while work runs; a lock left by a killed job
expires on its own and the next job takes it over. Takeovers go through a second mkdir mutex, so
two waiters cannot both replace one expired lock; acquiring is always the plain mkdir, so at most
one holder exists at any time.

The lab (fleet/scheduler.py) and the CLI's ship and rollback (deploy/pipeline.py: ship, held()
below) take the same lock, so a manual ship and a lab job exclude each other. A holder that was a
process of this very host (same host name and PID namespace) which no longer exists is taken over
at once rather than at its expiry: a ship killed with SIGKILL must not block the next one.
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from toolchain.core.errors import TargetError
from toolchain.transports.base import Transport

LOCK_NAME = ".edgedeploy-lab.lock"
STALE_TAKEOVER_S = 60  # a takeover mutex older than this was left by a job killed mid-takeover

_PARSE_EXPIRY = r"""sed -n 's/.*"expires_at": *\([0-9][0-9]*\).*/\1/p' "$lock/owner.json" 2>/dev/null | head -n 1"""

_ACQUIRE = r"""
lock=$1 token=$2 ttl=$3 meta=$4 stale=${5:-}
now=$(date +%s)
echo "NOW $now"
write_owner() {
    printf '{"token": "%s", "acquired_at": %s, "expires_at": %s, %s}\n' "$token" "$now" "$((now + ttl))" "$meta" \
        > "$lock/owner.json.tmp" && mv -f "$lock/owner.json.tmp" "$lock/owner.json"
}
mkdir -p "$(dirname "$lock")" || exit 3
if mkdir "$lock" 2>/dev/null; then write_owner && echo ACQUIRED; exit 0; fi
# Our own token: an earlier attempt of this very job left it (the board dropped off before the
# release got through). That attempt has ended, so the lock is still ours: no wait for its expiry.
if grep -q "\"token\": \"$token\"" "$lock/owner.json" 2>/dev/null; then write_owner && echo RECLAIMED; exit 0; fi
exp=$(EXPIRY)
if [ -z "$exp" ]; then
    # No owner.json: a holder between mkdir and its write, or one killed right there: judge by age.
    t=$(stat -c %Y "$lock" 2>/dev/null || echo "$now")
    exp=$((t + ttl))
fi
# stale: the token of a holder the caller saw die (a process of its own host): expired now.
cut=$now
if [ -n "$stale" ] && grep -q "\"token\": \"$stale\"" "$lock/owner.json" 2>/dev/null; then cut=$exp; fi
if [ "$cut" -ge "$exp" ]; then
    if mkdir "$lock.takeover" 2>/dev/null; then
        exp2=$(EXPIRY)
        [ -z "$exp2" ] && exp2=$exp
        if [ "$exp2" = "$exp" ]; then
            echo "PREVIOUS $(cat "$lock/owner.json" 2>/dev/null)"
            rm -rf "$lock"
            if mkdir "$lock" 2>/dev/null; then
                write_owner && rmdir "$lock.takeover" && echo TAKEOVER
                exit 0
            fi
        fi
        rmdir "$lock.takeover" 2>/dev/null
    else
        t=$(stat -c %Y "$lock.takeover" 2>/dev/null || echo "$now")
        [ $((now - t)) -gt STALE ] && rmdir "$lock.takeover" 2>/dev/null
    fi
fi
echo "HELD $(cat "$lock/owner.json" 2>/dev/null)"
""".replace("EXPIRY", _PARSE_EXPIRY).replace("STALE", str(STALE_TAKEOVER_S))

_RENEW = r"""
lock=$1 token=$2 ttl=$3
grep -q "\"token\": \"$token\"" "$lock/owner.json" 2>/dev/null || { echo LOST; exit 0; }
now=$(date +%s)
sed "s/\"expires_at\": *[0-9]*/\"expires_at\": $((now + ttl))/" "$lock/owner.json" > "$lock/owner.json.$token" \
    && mv -f "$lock/owner.json.$token" "$lock/owner.json" && echo RENEWED
"""

_RELEASE = r"""
lock=$1 token=$2
grep -q "\"token\": \"$token\"" "$lock/owner.json" 2>/dev/null && rm -rf "$lock" && echo RELEASED
exit 0
"""


class LockError(TargetError):
    """The board answered, but its lock could not be taken."""


class LockBusy(LockError):
    """Another job holds the board's lock and did not let go within the wait."""


@dataclass(frozen=True)
class Holder:
    owner: str
    job: str | None
    lab: str | None
    expires_in_s: float | None
    what: str | None = None  # the command holding it: ship, rollback; None: a lab
    since_s: float | None = None  # how long it has held the lock (the board's clock)
    host: str | None = None
    pid: int | None = None
    pid_ns: str | None = None
    token: str | None = None

    def describe(self) -> str:
        job = f"CI job {self.job}" if self.job else "no CI job"
        what = f"edgedeploy {self.what}, " if self.what else ""
        since = f", held for {self.since_s:.0f} s" if self.since_s is not None else ""
        exp = f", expires in {self.expires_in_s:.0f} s unless renewed" if self.expires_in_s is not None else ""
        return f"{self.owner} ({what}{job}{', lab ' + self.lab if self.lab else ''}{since}{exp})"

    def died_here(self) -> bool:
        """True when the holder was a process of this host (and PID namespace) that is gone."""
        if not self.pid or self.host != socket.gethostname() or self.pid_ns != _pid_namespace():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # EPERM: alive, another user's
        return False


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def ci_job() -> tuple[str | None, str | None]:
    """(job id, job URL) of the CI job running us: GitLab, GitHub Actions, or a generic CI_JOB_ID."""
    env = os.environ
    if env.get("GITHUB_RUN_ID"):
        url = None
        if env.get("GITHUB_SERVER_URL") and env.get("GITHUB_REPOSITORY"):
            url = f"{env['GITHUB_SERVER_URL']}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        attempt = f".{env['GITHUB_RUN_ATTEMPT']}" if env.get("GITHUB_RUN_ATTEMPT") else ""
        return f"{env['GITHUB_RUN_ID']}{attempt}", url
    if env.get("CI_JOB_ID"):
        return env["CI_JOB_ID"], env.get("CI_JOB_URL")
    return None, None


def lock_path(deploy_root: str) -> str:
    return posixpath.join(deploy_root, LOCK_NAME)


class BoardLock:
    """`with BoardLock(t, root, lab="x", ttl_s=120).held(wait_s=600): ...` deploys alone."""

    def __init__(self, transport: Transport, deploy_root: str, *, lab: str | None, ttl_s: float = 120.0, owner: str | None = None,
                 job: str | None = None, poll_s: float = 1.0, token: str | None = None, what: str | None = None,
                 busy_hint: str = "wait for that job to finish, raise timeouts.lock_wait") -> None:
        self.transport = transport
        self.path = lock_path(deploy_root)
        self.lab = lab
        self.what = what
        self.busy_hint = busy_hint
        self.ttl_s = max(3, int(ttl_s))
        # One token per holder. The lab passes the same one to every attempt on a board: a retry
        # after the board went away mid-run finds the lock its last attempt could not release and
        # takes it back at once, instead of waiting out lock.ttl behind itself.
        if token is not None and not (token and all(c in "0123456789abcdef" for c in token)):
            raise ValueError(f"lock token {token!r} is not lowercase hexadecimal")  # it is matched by grep on the board
        self.token = token or uuid.uuid4().hex
        job_id, job_url = ci_job()
        self.job = job if job is not None else job_id
        self.job_url = job_url
        self.owner = owner or f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
        self.poll_s = poll_s
        self.took_over: Holder | None = None  # the expired holder this lock replaced
        self.reclaimed = False  # took back the lock an earlier attempt with this token left
        self.waited_for: Holder | None = None  # the holder we waited on, if any
        self.lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- one round trip each ------------------------------------------------------------------

    def try_acquire(self, stale_token: str | None = None) -> Holder | None:
        """Take the lock now (None), or report who holds it. stale_token: the holder with this
        token is known dead (Holder.died_here): take it over now."""
        meta = json.dumps({"owner": self.owner, "job": self.job, "job_url": self.job_url, "lab": self.lab, "what": self.what,
                           "host": socket.gethostname(), "pid": os.getpid(), "pid_ns": _pid_namespace()})[1:-1]
        res = self.transport.run(["sh", "-c", _ACQUIRE, "sh", self.path, self.token, str(self.ttl_s), meta, stale_token or ""],
                                 timeout=30, check=False)
        lines = res.stdout.splitlines()
        now = next((float(x.split()[1]) for x in lines if x.startswith("NOW ")), None)
        if res.exit_status != 0 or not lines:
            raise LockError(f"{self.transport.display}: cannot create the board lock {self.path}: {res.tail() or 'no output'}",
                              "check that the deploy directory is writable on the board")
        if "RECLAIMED" in lines:
            self.reclaimed = True
            return None
        if "ACQUIRED" in lines or "TAKEOVER" in lines:
            prev = next((x[len("PREVIOUS "):] for x in lines if x.startswith("PREVIOUS ")), None)
            if "TAKEOVER" in lines:
                self.took_over = _holder(prev or "", now) or Holder("unknown owner", None, None, None)
            return None
        held = next((x[len("HELD "):] for x in lines if x.startswith("HELD")), "")
        return _holder(held, now) or Holder("a job that is still writing the lock", None, None, None)

    def renew(self) -> bool:
        """Push the expiry forward. On a link that carries one command at a time (a serial console)
        a beat is skipped while the deployment's own command runs: the console is opened
        exclusively, so no other job can reach the board meanwhile, and the next beat renews."""
        res = self.transport.try_run(["sh", "-c", _RENEW, "sh", self.path, self.token, str(self.ttl_s)], timeout=30)
        if res is None:
            return True
        if "LOST" in res.stdout:
            self.lost = True
        return "RENEWED" in res.stdout

    def release(self) -> None:
        self.transport.run(["sh", "-c", _RELEASE, "sh", self.path, self.token], timeout=30, check=False)

    # --- waiting and holding --------------------------------------------------------------------

    def acquire(self, wait_s: float, on_wait: Callable[[Holder], None] | None = None, *,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> float:
        """Take the lock, waiting up to wait_s for the holder; returns the seconds waited."""
        start = clock()
        while True:
            holder = self.try_acquire()
            if holder is not None and holder.died_here() and holder.token:
                holder = self.try_acquire(stale_token=holder.token)
            if holder is None:
                return clock() - start
            self.waited_for = holder
            waited = clock() - start
            if waited >= wait_s:
                raise LockBusy(
                    f"{self.transport.display}: board is locked by {holder.describe()}; waited {waited:.0f} s",
                    f"{self.busy_hint}, or if it died its lock expires by itself "
                    f"(remove {self.path} on the board to free it at once)")
            if on_wait is not None:
                on_wait(holder)
            sleep(min(self.poll_s, max(0.05, wait_s - waited)))

    @contextmanager
    def held(self, wait_s: float, on_wait: Callable[[Holder], None] | None = None) -> Iterator[BoardLock]:
        self.acquire(wait_s, on_wait)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat-{self.transport.display}", daemon=True)
        self._beat.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._beat.join(timeout=35)
            try:
                self.release()
            except TargetError:
                pass  # the board went away: the lock expires by itself

    def _heartbeat(self) -> None:
        # Renew at a third of the ttl: two missed beats (a slow link) still leave the lock ours.
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew() and self.lost:
                    return
            except TargetError:
                continue  # transient: the next beat tries again before expiry


def _holder(owner_json: str, now: float | None) -> Holder | None:
    try:
        doc: object = json.loads(owner_json)
    except ValueError:
        return None
    if not isinstance(doc, dict):  # another tool's file, or a half-written one
        return None
    exp, job, lab, acquired = doc.get("expires_at"), doc.get("job"), doc.get("lab"), doc.get("acquired_at")
    pid, what, host, ns, token = doc.get("pid"), doc.get("what"), doc.get("host"), doc.get("pid_ns"), doc.get("token")
    return Holder(owner=str(doc.get("owner") or "unknown owner"), job=str(job) if job is not None else None,
                  lab=str(lab) if lab else None,
                  expires_in_s=(float(exp) - now) if isinstance(exp, (int, float)) and now is not None else None,
                  what=str(what) if what else None,
                  since_s=(now - float(acquired)) if isinstance(acquired, (int, float)) and now is not None else None,
                  host=str(host) if host else None, pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                  pid_ns=str(ns) if ns else None, token=str(token) if token else None)
