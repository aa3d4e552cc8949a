"""A point-to-point link with a fixed one-way delay, for kernels without netem (sch_netem), and
the faults netem would give: packet loss, a bandwidth cap, a total outage.

Usage: python -I -S delayline.py HOST_IF BOARD_IF DELAY_MS [CONTROL]   (replay/board.py, cluster.py)

Creates two TUN devices, prints "ready", then forwards every IP packet read from one to the
other DELAY_MS later (each direction: a round trip costs twice that, as with netem on both ends
of a veth pair). The caller moves BOARD_IF into the board's network namespace and gives both
ends their addresses. The devices are not persistent: they vanish when this process exits, so
a killed bench leaves no interface behind. Stdlib only, one thread: an idle link costs nothing,
a busy one a few microseconds per packet (the caller sets a 64 kB MTU, so TCP sends few).

CONTROL, when given, is a JSON file read at start and again on SIGHUP (replay/board.py's
set_link): {"loss": 0.05, "rate": 250000, "down": false}: each packet (either way) is dropped
with probability `loss`; `rate` caps each direction at that many bytes/s (packets queue behind
one another, as on a slow radio link, so a 1.4 MB transfer takes seconds and can be cut
mid-way); `down` drops everything (a cable pulled, a board rebooting: no RST, only silence).
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
READ_MAX = 65536


class Faults:
    """What the link does to packets besides delaying them; replaced whole on SIGHUP."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.loss, self.rate, self.down = 0.0, 0.0, False
        self.dropped = 0
        self.rng = random.Random(0x5EED)  # the same losses run after run: a failure can be replayed
        self.reload()

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"delayline: cannot read {self.path}: {exc}", file=sys.stderr, flush=True)
            return
        self.loss = min(1.0, max(0.0, float(doc.get("loss", 0.0))))
        self.rate = max(0.0, float(doc.get("rate", 0.0)))
        self.down = bool(doc.get("down", False))

    def drop(self) -> bool:
        if self.down or (self.loss and self.rng.random() < self.loss):
            self.dropped += 1
            return True
        return False


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def forward(a: int, b: int, delay_s: float, faults: Faults) -> None:
    """Until an end goes away: packets from a to b and from b to a, each delay_s after it arrived
    (after it finished crossing a rate-capped link). Departures are ordered in a heap: with one
    delay and no cap that is arrival order, as before; a cap delays each direction on its own."""
    peer = {a: b, b: a}
    free_at = {a: 0.0, b: 0.0}  # when each direction's wire is free again (rate cap)
    queue: list[tuple[float, int, int, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        try:
            ready, _, _ = select.select([a, b], [], [], timeout)
        except InterruptedError:  # SIGHUP on an old Python: look again
            continue
        now = time.monotonic()
        for fd in ready:
            while True:
                try:
                    packet = os.read(fd, READ_MAX)
                except BlockingIOError:
                    break
                except OSError:  # the board's namespace (and its end) is gone
                    return
                if faults.drop():
                    continue
                out = peer[fd]
                leaves = now
                if faults.rate:
                    leaves = free_at[out] = max(now, free_at[out]) + len(packet) / faults.rate
                seq += 1
                heapq.heappush(queue, (leaves + delay_s, seq, out, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, fd, packet = heapq.heappop(queue)
            if faults.down:  # packets on the wire when it went down are lost too
                continue
            try:
                os.write(fd, packet)
            except OSError:
                pass  # that end is not up yet (EIO) or its queue is full: dropped, as a real link would


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: delayline.py HOST_IF BOARD_IF DELAY_MS [CONTROL]", file=sys.stderr)
        return 2
    host_if, board_if, delay_ms = argv[0], argv[1], float(argv[2])
    faults = Faults(argv[3] if len(argv) == 4 else None)
    signal.signal(signal.SIGHUP, lambda _s, _f: faults.reload())
    try:
        a, b = open_tun(host_if), open_tun(board_if)
    except OSError as exc:
        print(f"delayline: cannot create TUN devices {host_if}/{board_if}: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    forward(a, b, delay_ms / 1000.0, faults)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
