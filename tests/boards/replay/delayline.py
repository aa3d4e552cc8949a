"""A point-to-point link with a fixed one-way delay, for kernels without netem (sch_netem).

Usage: python -I -S delayline.py HOST_IF BOARD_IF DELAY_MS [RATE_BIT_S]   (replay/board.py, cluster.py)

Creates two TUN devices, prints "ready", then forwards every IP packet read from one to the
other DELAY_MS later (each direction: a round trip costs twice that, as with netem on both ends
of a veth pair). With RATE_BIT_S each direction is also a wire of that rate: a packet leaves once
the ones before it in its direction have, after its size at that rate (netem's `rate`).
The caller moves BOARD_IF into the board's network namespace and gives both ends their
addresses. The devices are not persistent: they vanish when this process exits, so a killed
bench leaves no interface behind. Stdlib only, one thread: an idle link costs nothing,
a busy one a few microseconds per packet (the caller sets a 64 kB MTU, so TCP sends few).
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
READ_MAX = 65536


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def forward(a: int, b: int, delay_s: float, rate_bit_s: float = 0.0) -> None:
    """Until an end goes away: packets from a to b and from b to a, each delay_s after it arrived
    (after it was serialised at rate_bit_s, when given). Departure times only grow within one
    direction, so a FIFO per direction keeps each in order."""
    peer = {a: b, b: a}
    queues: dict[int, collections.deque[tuple[float, bytes]]] = {a: collections.deque(), b: collections.deque()}
    wire_free = {a: 0.0, b: 0.0}  # when the wire towards each end is free again
    while True:
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        ready, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            to = peer[fd]
            while True:
                try:
                    packet = os.read(fd, READ_MAX)
                except BlockingIOError:
                    break
                except OSError:  # the board's namespace (and its end) is gone
                    return
                sent = now
                if rate_bit_s > 0:
                    sent = wire_free[to] = max(now, wire_free[to]) + len(packet) * 8 / rate_bit_s
                queues[to].append((sent + delay_s, packet))
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                try:
                    os.write(fd, packet)
                except OSError:
                    pass  # that end is not up yet (EIO) or its queue is full: dropped, as a real link would


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: delayline.py HOST_IF BOARD_IF DELAY_MS [RATE_BIT_S]", file=sys.stderr)
        return 2
    host_if, board_if, delay_ms = argv[0], argv[1], float(argv[2])
    rate = float(argv[3]) if len(argv) == 4 else 0.0
    try:
        a, b = open_tun(host_if), open_tun(board_if)
    except OSError as exc:
        print(f"delayline: cannot create TUN devices {host_if}/{board_if}: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    forward(a, b, delay_ms / 1000.0, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
