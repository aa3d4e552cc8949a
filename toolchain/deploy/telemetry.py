"""Pull the runner's JSON lines back from the target and turn them into a Telemetry (or a reason).

The event format (names, fields) is toolchain/device/events.py, the module the runner writes
with. Parsing is pure: `parse_events` and `telemetry_from_events` take text and events, no I/O.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from toolchain.core.errors import EdgeDeployError, TargetError
from toolchain.core.nouns import Telemetry
from toolchain.core.serde import from_dict
from toolchain.device import events as ev
from toolchain.device.events import ErrorEvent, Event, ResultEvent, StartEvent
from toolchain.transports.base import Transport

__all__ = ["ErrorEvent", "Event", "ResultEvent", "StartEvent", "error_event", "fetch_events", "parse_events", "peak_rss",
           "result_event", "start_events", "telemetry_from_events"]


# A run writes a few kB of events; a file far larger is not the runner's and is not pulled back.
MAX_TELEMETRY_BYTES = 16 << 20


def fetch_events(transport: Transport, remote: str, local: Path) -> list[Event]:
    """Copy the remote JSON lines to `local` (always written) and parse them."""
    try:
        transport.get(remote, local, max_bytes=MAX_TELEMETRY_BYTES)
    except (EdgeDeployError, OSError):  # no telemetry file (the runner died before writing), or a runaway one
        local.write_text("")
        return []
    return parse_events(local.read_text(errors="replace"))


def parse_events(text: str) -> list[Event]:
    events: list[Event] = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed runner
        if isinstance(item, dict):
            events.append(item)
    return events


def _last(events: list[Event], name: str) -> Event | None:
    return next((e for e in reversed(events) if e.get("event") == name), None)


def result_event(events: list[Event]) -> ResultEvent | None:
    # The runner of this toolchain writes every field; an older one may lack some (read with .get).
    return cast("ResultEvent | None", _last(events, ev.RESULT))


def error_event(events: list[Event]) -> ErrorEvent | None:
    return cast("ErrorEvent | None", _last(events, ev.ERROR))


def start_events(events: list[Event]) -> list[StartEvent]:
    return [cast(StartEvent, e) for e in events if e.get("event") == ev.START]


def peak_rss(events: list[Event]) -> int:
    """The highest VmHWM any event reported (the runner's memory watcher emits as it grows)."""
    return max((int(e.get("peak_rss_bytes") or 0) for e in events), default=0)


def telemetry_from_events(events: list[Event]) -> Telemetry | None:
    """The result event as Telemetry; fields Telemetry lacks go to .extra (JSON keys: add, never rename)."""
    result = result_event(events)
    if result is None:
        return None
    data: dict[str, object] = {k: v for k, v in result.items() if k not in ("event", "time")}
    data["extra"] = {k: data.pop(k) for k in list(data) if k not in Telemetry.__dataclass_fields__}
    # What a board sends is data from outside: the strict schema (finite numbers, text where text belongs) checks it.
    try:
        return from_dict(Telemetry, data, strict=True, where="")
    except ValueError as exc:
        raise TargetError(f"the runner's result is not valid telemetry: {exc}",
                          "the board's runner or llama-cpp-python misbehaved; see runner.log.tail in the run directory") from exc
