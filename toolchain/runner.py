"""Start the on-device runner of a release, wait with a timeout, bring its telemetry back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import CommandTimeout
from toolchain.models import Release, Telemetry
from toolchain.serde import from_dict
from toolchain.transports.base import Transport

BENCH_TIMEOUT_S = 1800.0
OOM_STATUSES = (137, -9)


@dataclass(frozen=True)
class RunOutcome:
    exit_status: int
    events: list[dict[str, Any]]
    telemetry: Telemetry | None
    error: str | None  # what went wrong, in words, when telemetry is missing
    log_tail: str = ""
    failure_kind: str | None = None  # oom | crash | timeout | None
    extra: dict[str, Any] = field(default_factory=dict)


def run_bench(
    transport: Transport, release: Release, *, python: str, run_dir: Path, timeout: float = BENCH_TIMEOUT_S,
    extra_args: list[str] | None = None,
) -> RunOutcome:
    remote_out = f"{release.path}/telemetry.jsonl"
    transport.run(["rm", "-f", remote_out], timeout=30)
    argv = ["sh", f"{release.path}/run.sh", "bench", "--out", remote_out, *(extra_args or [])]
    try:
        res = transport.run(argv, timeout=timeout, check=False, env={"EDGEDEPLOY_PYTHON": python})
        status = res.exit_status
    except CommandTimeout:
        status = -1
    local_out = run_dir / "telemetry.jsonl"
    events = _fetch_events(transport, remote_out, local_out)
    log_tail = transport.run(["sh", "-c", 'tail -n 20 "$1" 2>/dev/null || true', "sh", f"{release.path}/runner.log"],
                             timeout=30, check=False).stdout
    (run_dir / "runner.log.tail").write_text(log_tail)
    result = next((e for e in reversed(events) if e.get("event") == "result"), None)
    if result is not None and status == 0:
        data = dict(result)
        data["extra"] = {k: data.pop(k) for k in list(data) if k not in Telemetry.__dataclass_fields__}
        return RunOutcome(status, events, from_dict(Telemetry, data), None, log_tail)
    peak = max((int(e.get("peak_rss_bytes", 0)) for e in events), default=0)
    if status == -1:
        return RunOutcome(status, events, None, f"runner did not finish within {timeout:g} s", log_tail, "timeout")
    if status in OOM_STATUSES or _oom_in_kernel_log(transport):
        return RunOutcome(status, events, None, f"runner was killed for memory (out of memory) at peak RSS {peak} bytes",
                          log_tail, "oom", {"peak_rss_bytes": peak})
    err = next((e for e in reversed(events) if e.get("event") == "error"), None)
    why = f"{err.get('kind')}: {err.get('message')}" if err else "no result in telemetry"
    return RunOutcome(status, events, None, f"runner failed (exit {status}): {why}", log_tail, "crash")


def _fetch_events(transport: Transport, remote: str, local: Path) -> list[dict[str, Any]]:
    try:
        transport.get(remote, local)
    except Exception:  # no telemetry file at all: the runner died before writing
        local.write_text("")
        return []
    events: list[dict[str, Any]] = []
    for line in local.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed runner
        if isinstance(item, dict):
            events.append(item)
    return events


def _oom_in_kernel_log(transport: Transport) -> bool:
    res = transport.run(["sh", "-c", "dmesg 2>/dev/null | tail -n 50"], timeout=15, check=False)
    text = res.stdout.lower()
    return "out of memory" in text or "oom-kill" in text
