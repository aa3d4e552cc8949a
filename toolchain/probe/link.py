"""The link between a head and a worker, measured by the boards themselves.

A split model pays, every token, a round trip to each worker and its hidden state both ways
(plan/split.py). Both are measured where they happen: the worker starts a one-client TCP server
(toolchain/device/link_probe.py) bound to the address the head reaches it at, the head times many
small request/replies and a few MB in one stream against it, and the server is stopped. Nothing is
guessed: a worker the tool cannot measure has no split. The result is stored per pair of devices
and worker address, and a later plan within REUSE_S takes it from the store.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import statistics
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from toolchain.core.errors import BadInputError, TargetError
from toolchain.core.nouns import HostFacts, LinkFacts, TargetSpec
from toolchain.device import device_source
from toolchain.store.records import LinkMeasurement
from toolchain.transports.base import Transport

PINGS = 200  # small request/replies: the median and p90 of 200 settle within a few %
PING_BYTES = 64  # the device module's message size
BULK_BYTES = 4 << 20  # sent three times: a few MB show a LAN's rate without taking seconds
SERVER_IDLE_S = 60  # the worker's server exits by itself after this long without its client
REUSE_S = 3600.0  # a stored measurement younger than this is reused by plans
METHOD = f"python TCP, {PINGS} x {PING_BYTES} B request/reply (TCP_NODELAY), 3 x {BULK_BYTES >> 20} MiB head -> worker"
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


@dataclass(frozen=True)
class Endpoint:
    """One side of the link: how to run commands there, its python, and its name for messages."""

    name: str
    transport: Transport
    python: str


def worker_address(spec: TargetSpec, transport: Transport) -> str:
    """The worker's address on the network the head uses: for SSH, the address the worker answered
    this connection on (its end of $SSH_CONNECTION); the local machine is 127.0.0.1. adb and serial
    targets have no such address."""
    if spec.kind == "local":
        return "127.0.0.1"
    if spec.kind != "ssh":
        raise BadInputError(f"{spec.name}: a {spec.kind} target has no network address a split can use",
                            "a worker of a split is reached over the lab network: give an SSH target")
    out = transport.run_shell('printf %s "$SSH_CONNECTION"', timeout=30, check=False).stdout.split()
    if len(out) != 4:
        raise TargetError(f"{spec.name}: could not tell the address it answers on ($SSH_CONNECTION is {' '.join(out) or 'empty'})",
                          "the SSH server should set SSH_CONNECTION; check the target's sshd")
    return check_address(out[2], spec.name)


def check_address(text: str, where: str) -> str:
    """An IP address or a host name, nothing a shell or socket call could take for something else."""
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        if _HOSTNAME.match(text) and ".." not in text:
            return text
    raise BadInputError(f"{where}: {text!r} is not an address", "give an IP address or a host name")


def measure(head: Endpoint, worker: Endpoint, address: str, *, pings: int = PINGS, bulk_bytes: int = BULK_BYTES,
            timeout_s: float = 120.0, now: datetime | None = None) -> LinkFacts:
    """Start the worker's server on `address`, time the link from the head, stop the server."""
    address = check_address(address, worker.name)
    source = device_source("link_probe.py")
    token = secrets.token_hex(16)
    started = worker.transport.run([worker.python, "-c", source, "serve", address, str(SERVER_IDLE_S), token], timeout=30, check=False)
    fields = started.stdout.split()
    if not started.ok or len(fields) != 2 or not all(f.isdigit() for f in fields):
        last = (started.tail().splitlines() or [""])[-1]
        raise TargetError(f"{worker.name}: the link probe's server did not start on {address}: {last or 'no output'}",
                          f"check that {address} is an address of {worker.name} and that its python runs")
    port, pid = int(fields[0]), int(fields[1])
    try:
        ran = head.transport.run([head.python, "-c", source, "client", address, str(port), token, str(pings), str(bulk_bytes)],
                                 timeout=timeout_s, check=False)
        if not ran.ok:
            last = (ran.tail().splitlines() or [""])[-1]
            raise TargetError(f"{head.name} cannot reach {worker.name} at {address}:{port}: {last or f'exit {ran.exit_status}'}",
                              f"the head must reach the worker's lab address; check the network and any firewall between "
                              f"{head.name} and {worker.name}")
        lines = ran.stdout.strip().splitlines()
        doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError as exc:
        raise TargetError(f"{head.name}: the link probe printed no result", "run with --debug to see its output") from exc
    finally:
        worker.transport.run([worker.python, "-c", source, "stop", str(pid), token], timeout=30, check=False)
    return link_from(doc, head=head.name, worker=worker.name, address=address, measured_at=now or datetime.now(UTC))


def link_from(doc: object, *, head: str, worker: str, address: str, measured_at: datetime) -> LinkFacts:
    """The client's JSON line -> LinkFacts. Throughput is the bulk bytes over the median bulk time
    less one round trip (each bulk ends with a small acknowledgement)."""
    if not isinstance(doc, dict):
        raise TargetError(f"{head}: the link probe's result is not an object", "run with --debug to see its output")
    try:
        rtt, p90, lo = (float(doc[k]) for k in ("rtt_median_s", "rtt_p90_s", "rtt_min_s"))
        bulk = int(doc["bulk_bytes"])
        times = sorted(float(x) for x in doc["bulk_s"])
        samples = int(doc["rtts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TargetError(f"{head}: the link probe's result lacks {exc}", "run with --debug to see its output") from exc
    if not (0 < lo <= rtt <= p90 < 60) or bulk <= 0 or not times or samples <= 0 or min(times) <= 0:
        raise TargetError(f"{head}: the link probe's figures are out of range ({doc})", "measure again; the link may be failing")
    seconds = max(statistics.median(times) - rtt, times[0] * 0.05)
    return LinkFacts(head=head, worker=worker, address=address, rtt_s=rtt, rtt_p90_s=p90, rtt_min_s=lo,
                     throughput_bytes_per_s=bulk / seconds, samples=samples, bulk_bytes=bulk, method=METHOD,
                     measured_at=measured_at.isoformat(timespec="seconds"))


# --- the store ----------------------------------------------------------------------------------


def fingerprints(head: HostFacts, worker: HostFacts) -> tuple[str, str]:
    from toolchain.plan.calibration import fingerprint

    return fingerprint(head), fingerprint(worker)


def to_record(link: LinkFacts) -> LinkMeasurement:
    return LinkMeasurement(head_fingerprint=link.head_fingerprint, worker_fingerprint=link.worker_fingerprint, address=link.address,
                           measured_at=datetime.fromisoformat(link.measured_at), head=link.head, worker=link.worker, rtt_s=link.rtt_s,
                           rtt_p90_s=link.rtt_p90_s, rtt_min_s=link.rtt_min_s, throughput_bytes_per_s=link.throughput_bytes_per_s,
                           samples=link.samples, bulk_bytes=link.bulk_bytes, method=link.method)


def from_record(r: LinkMeasurement, head: str, worker: str) -> LinkFacts:
    return LinkFacts(head=head, worker=worker, address=r.address, rtt_s=r.rtt_s, rtt_p90_s=r.rtt_p90_s, rtt_min_s=r.rtt_min_s,
                     throughput_bytes_per_s=r.throughput_bytes_per_s, samples=r.samples, bulk_bytes=r.bulk_bytes,
                     method=f"{r.method} (stored {r.measured_at.isoformat(timespec='seconds')})",
                     measured_at=r.measured_at.isoformat(timespec="seconds"), head_fingerprint=r.head_fingerprint,
                     worker_fingerprint=r.worker_fingerprint)


def record(link: LinkFacts, url: str | None = None) -> None:
    from toolchain.store.history import History

    with History(url) as h:
        h.add_link(to_record(link))


def stored(head_fp: str, worker_fp: str, address: str, *, head: str, worker: str, max_age_s: float = REUSE_S,
           now: datetime | None = None, url: str | None = None) -> LinkFacts | None:
    """The newest stored measurement of this link if it is younger than max_age_s."""
    from toolchain.store.records import default_url

    db = url or default_url()
    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        return None  # nothing stored yet: no need to open (and create) the database
    from toolchain.store.history import History

    with History(url) as h:
        r = h.latest_link(head_fp, worker_fp, address)
    if r is None or (now or datetime.now(UTC)) - r.measured_at > timedelta(seconds=max_age_s):
        return None
    return from_record(r, head, worker)


def link_for(head: Endpoint, worker: Endpoint, address: str, head_facts: HostFacts, worker_facts: HostFacts, *,
         fresh: bool = False, url: str | None = None) -> LinkFacts:
    """The link as plans use it: a recent stored measurement of this pair at this address, else a
    new one (stored)."""
    hfp, wfp = fingerprints(head_facts, worker_facts)
    if not fresh:
        old = stored(hfp, wfp, address, head=head.name, worker=worker.name, url=url)
        if old is not None:
            return old
    new = replace(measure(head, worker, address), head_fingerprint=hfp, worker_fingerprint=wfp)
    record(new, url)
    return new
