"""Start the on-device runner of a release, wait with a timeout, bring its telemetry back.

Failures are classified, never raised past the caller: out of memory (exit 137 / SIGKILL, or the
kernel log names the runner's pid) with the peak reached, a crash with the last lines of its
log, a timeout, a board that rebooted mid-run (its boot_id changed) or vanished.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolchain.core.errors import CommandTimeout, EdgeDeployError
from toolchain.core.nouns import Release, Telemetry
from toolchain.core.units import fmt_bytes
from toolchain.deploy.telemetry import Event, error_event, fetch_events, peak_rss, start_events, telemetry_from_events
from toolchain.transports.base import Transport

BENCH_TIMEOUT_S = 1800.0
OOM_STATUSES = (137, -9)
REBOOT_WAIT_S = 180.0  # how long to wait for a board that dropped off mid-run to come back
LOG_TAIL_LINES = 20
_BOOT_ID = "cat /proc/sys/kernel/random/boot_id 2>/dev/null || true"


@dataclass(frozen=True)
class RunOutcome:
    exit_status: int
    events: list[Event]
    telemetry: Telemetry | None
    error: str | None  # what went wrong, in words, when telemetry is missing
    log_tail: str = ""
    failure_kind: str | None = None  # oom | crash | timeout | reboot | unreachable | None
    extra: dict[str, int | str] = field(default_factory=dict)  # the evidence: peak_rss_bytes, boot_id_before/after


def boot_id(transport: Transport) -> str | None:
    """The kernel's per-boot random id; None where the target has none (macOS, a stub)."""
    out = transport.run_shell(_BOOT_ID, timeout=30, check=False).stdout.strip()
    return out or None


def run_bench(
    transport: Transport, release: Release, *, python: str, run_dir: Path, timeout: float = BENCH_TIMEOUT_S,
    extra_args: list[str] | None = None, reboot_wait_s: float = REBOOT_WAIT_S,
) -> RunOutcome:
    remote_out = f"{release.path}/telemetry.jsonl"
    log = f"{release.path}/runner.log"
    transport.run(["rm", "-f", remote_out, log], timeout=30)
    before = boot_id(transport)
    # Where the link can tell (local pipe, SSH channel), the runner stops itself when this process
    # dies: it watches the stdin we hold open. Elsewhere the next ship stops it (leftover_runners).
    watch = ["--watch-stdin"] if transport.capabilities.stdin_ends_with_host else []
    argv = ["sh", f"{release.path}/run.sh", "bench", "--out", remote_out, *watch, *(extra_args or [])]
    lost: EdgeDeployError | None = None
    try:
        status = transport.run(argv, timeout=timeout, check=False, env={"EDGEDEPLOY_PYTHON": python}, hold_stdin=True).exit_status
    except CommandTimeout:
        status = -1
    except EdgeDeployError as exc:  # the link dropped: a reboot, a crash of the board, or the network
        status, lost = -2, exc
    after = boot_id(transport) if lost is None else _wait_for_board(transport, reboot_wait_s)
    stopped = _stop_leftovers(transport, release) if lost is not None and after is not None and after == before else 0
    if lost is not None or (before and after and before != after):
        out = _lost_board(status, before, after, lost)
        return replace(out, error=f"{out.error}; stopped its leftover runner ({stopped} process{'es' if stopped > 1 else ''})") if stopped else out
    events = fetch_events(transport, remote_out, run_dir / "telemetry.jsonl")
    log_tail = _tail(transport, log)
    (run_dir / "runner.log.tail").write_text(log_tail)
    tel = telemetry_from_events(events)
    if tel is not None and status == 0:
        return RunOutcome(status, events, tel, None, log_tail)
    return classify_failure(status, events, log_tail, timeout, _oom_in_kernel_log(transport, events))


# Every releases/*/runner.pid under the deploy root ($1): a live runner (checked to be one: a pid
# may have been reused) is stopped, TERM then KILL; the file goes either way. One line each:
# STOPPED|CLEARED <release> <pid> [what the runner wrote when it stopped itself].
_STOP_RUNNERS = r"""
for f in "$1"/releases/*/runner.pid; do
    [ -f "$f" ] || continue
    rel=$(basename "$(dirname "$f")")
    pid=$(head -n 1 "$f" | tr -cd 0-9)
    why=$(sed -n 2p "$f")
    cmd=""
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || ps -p "$pid" -o args= 2>/dev/null)
    fi
    case "$cmd" in
        *runner.py*)
            kill "$pid" 2>/dev/null
            i=0
            while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
            echo "STOPPED $rel $pid" ;;
        *) echo "CLEARED $rel ${pid:-?} $why" ;;
    esac
    rm -f "$f"
done
exit 0
"""


@dataclass(frozen=True)
class Leftover:
    """A runner pid file found under the deploy root: a ship killed, or stopped, mid-run."""

    release: str
    pid: str
    stopped: bool  # True: the runner was still running and we stopped it; False: it was gone
    why: str = ""  # what the runner wrote when it stopped itself

    def describe(self) -> str:
        if self.stopped:
            return f"stopped the runner of release {self.release} (pid {self.pid}) that an earlier ship left running"
        return (f"cleared the pid file of release {self.release}'s runner (pid {self.pid}), no longer running"
                + (f": it {self.why}" if self.why else ""))


def stop_runners(transport: Transport, root: str) -> list[Leftover]:
    """Stop every runner still running under root and clear every runner pid file (one round trip)."""
    res = transport.run(["sh", "-c", _STOP_RUNNERS, "sh", root], timeout=30, check=False)
    found = []
    for line in res.stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0] in ("STOPPED", "CLEARED"):
            found.append(Leftover(parts[1], parts[2], parts[0] == "STOPPED", parts[3].strip() if len(parts) > 3 else ""))
    return found


def classify_failure(status: int, events: list[Event], log_tail: str, timeout: float, kernel_oom: bool) -> RunOutcome:
    """A run without a result -> what happened, in words, with the evidence (pure)."""
    peak = peak_rss(events)
    err = error_event(events)
    if status == -1:
        return RunOutcome(status, events, None, f"runner did not finish within {timeout:g} s (peak RSS {fmt_bytes(peak)})",
                          log_tail, "timeout", {"peak_rss_bytes": peak})
    if status in OOM_STATUSES or kernel_oom or (err is not None and err.get("kind") == "oom"):
        how = "the kernel's out-of-memory killer" if kernel_oom else f"exit {status}: SIGKILL, as the out-of-memory killer sends"
        return RunOutcome(status, events, None,
                          f"runner was killed for memory (out of memory; {how}) at peak RSS {fmt_bytes(peak)} ({peak} bytes)",
                          log_tail, "oom", {"peak_rss_bytes": peak})
    why = f"{err.get('kind')}: {err.get('message')}" if err else "no result in telemetry"
    last = log_tail.strip().splitlines()[-1] if log_tail.strip() else ""
    return RunOutcome(status, events, None, f"runner failed (exit {status}): {why}" + (f"; last log line: {last}" if last and not err else ""),
                      log_tail, "crash", {"peak_rss_bytes": peak})


def _lost_board(status: int, before: str | None, after: str | None, lost: EdgeDeployError | None) -> RunOutcome:
    if after is None:
        why = lost.message if lost else "no answer"
        return RunOutcome(status, [], None, f"the board became unreachable during the run ({why})", "", "unreachable")
    if before and after != before:
        return RunOutcome(status, [], None, f"the board rebooted during the run (boot_id {before[:8]}… -> {after[:8]}…)",
                          "", "reboot", {"boot_id_before": before, "boot_id_after": after})
    why = lost.message if lost else "connection lost"
    return RunOutcome(status, [], None, f"the connection dropped during the run ({why}); the board did not reboot", "", "unreachable")


def _wait_for_board(transport: Transport, wait_s: float) -> str | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return boot_id(transport) or ""
        except EdgeDeployError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def _stop_leftovers(transport: Transport, release: Release) -> int:
    """The link dropped but the board did not reboot: its runner may still be running, orphaned
    (without a tty nothing tells it its session ended), and would hold memory and cores while the
    retry measures another release, or get it killed for memory: a result failure for what was
    the link's fault. SIGKILL every process whose command line names this release's run.sh or
    runner.py, with its process group (what they started). Linux /proc; best effort. Returns how
    many it killed (not counting their groups)."""
    script = ('n=0; own=$(sed "s/.*) //" /proc/$$/stat | cut -d" " -f3); '
              'for f in $(grep -lF -- "$1/run" /proc/[0-9]*/cmdline 2>/dev/null); do p=${f#/proc/}; p=${p%/cmdline}; '
              '[ "$p" = $$ ] && continue; g=$(sed "s/.*) //" "/proc/$p/stat" 2>/dev/null | cut -d" " -f3); '
              'kill -9 "$p" 2>/dev/null && n=$((n + 1)); [ -n "$g" ] && [ "$g" != "$own" ] && kill -9 "-$g" 2>/dev/null; '
              'done; echo "$n"')
    try:
        out = transport.run(["sh", "-c", script, "sh", release.path], timeout=30, check=False).stdout.strip()
    except EdgeDeployError:
        return 0  # the board went away again: the retry's own connection will tell
    return int(out) if out.isdigit() else 0


def _tail(transport: Transport, path: str) -> str:
    return transport.run(["sh", "-c", 'tail -n "$2" "$1" 2>/dev/null || true', "sh", path, str(LOG_TAIL_LINES)],
                         timeout=30, check=False).stdout


def _oom_in_kernel_log(transport: Transport, events: list[Event]) -> bool:
    """True when the kernel log says it killed this runner (by pid): an old OOM of something else must not count."""
    pids = {str(e["pid"]) for e in start_events(events) if e.get("pid")}
    if not pids:
        return False
    text = transport.run(["sh", "-c", "dmesg 2>/dev/null | tail -n 200"], timeout=15, check=False).stdout
    return any(re.search(rf"(Out of memory|oom-kill|Memory cgroup out of memory).*\b{pid}\b", text, re.I) for pid in pids)
