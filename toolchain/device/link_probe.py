"""The link between two boards, measured by the boards themselves (stdlib, Python 3.8+).

Run as `python -c SOURCE ROLE ...` (probe/link.py sends it):
  serve ADDRESS IDLE_S TOKEN   bind ADDRESS on a free port, print "PORT PID", detach, answer one
                               client that presents TOKEN, exit when it is done or after IDLE_S idle
  client ADDRESS PORT TOKEN PINGS BULK_BYTES   time PINGS small request/replies and BULK_BYTES sent
                               in one stream; print one JSON line
  stop PID TOKEN               end a server this tool started (only if PID still runs with TOKEN)

The server binds only the address given (the lab address the head uses), refuses a client without
the token, serves one client and exits: nothing is left listening.
"""

import hmac
import json
import os
import signal
import socket
import sys
import time

PING_BYTES = 64
CHUNK = 1 << 16
MAX_BULK = 256 << 20


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(CHUNK, n - len(buf)))
        if not part:
            raise ConnectionError("peer closed")
        buf += part
    return bytes(buf)


def _recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        part = sock.recv(1)
        if not part or len(buf) > limit:
            raise ConnectionError("no line")
        buf += part
    return bytes(buf[:-1])


def _serve_one(listener: socket.socket, token: bytes, idle_s: float) -> None:
    listener.settimeout(idle_s)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(idle_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not hmac.compare_digest(_recv_line(conn), token):
            return
        conn.sendall(b"ok\n")
        while True:
            head = _recv_line(conn)
            if head == b"p":
                conn.sendall(_recv_exact(conn, PING_BYTES))
            elif head.startswith(b"b "):
                n = int(head[2:])
                if not 0 < n <= MAX_BULK:
                    return
                left = n
                while left:
                    part = conn.recv(min(CHUNK, left))
                    if not part:
                        return
                    left -= len(part)
                conn.sendall(b"ok\n")
            else:
                return


def serve(address: str, idle_s: float, token: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid > 0:  # the parent reports and exits, so the caller's command ends; the child serves
        print(port, pid)
        sys.stdout.flush()
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let go of the caller's pipes (an SSH channel waits for them to close)
        os.dup2(devnull, fd)
    try:
        _serve_one(listener, token.encode(), idle_s)
    except (OSError, ValueError, ConnectionError):
        pass
    finally:
        listener.close()
        os._exit(0)


def client(address: str, port: int, token: str, pings: int, bulk: int) -> "dict[str, object]":
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect((address, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(token.encode() + b"\n")
        if _recv_line(s) != b"ok":
            raise ConnectionError("refused")
        payload = os.urandom(PING_BYTES)
        rtts = []
        for _ in range(pings):
            t0 = time.perf_counter()
            s.sendall(b"p\n" + payload)
            _recv_exact(s, PING_BYTES)
            rtts.append(time.perf_counter() - t0)
        block = os.urandom(CHUNK)
        bulk_s = []
        for _ in range(3):
            t0 = time.perf_counter()
            s.sendall(f"b {bulk}\n".encode())
            left = bulk
            while left:
                n = min(CHUNK, left)
                s.sendall(block[:n])
                left -= n
            if _recv_line(s) != b"ok":
                raise ConnectionError("bulk not acknowledged")
            bulk_s.append(time.perf_counter() - t0)
        s.sendall(b"q\n")
    rtts.sort()
    return {"rtts": len(rtts), "rtt_min_s": rtts[0], "rtt_median_s": rtts[len(rtts) // 2],
            "rtt_p90_s": rtts[min(len(rtts) - 1, int(0.9 * len(rtts)))], "bulk_bytes": bulk, "bulk_s": sorted(bulk_s)}


def stop(pid: int, token: str) -> bool:
    cmdline = f"/proc/{pid}/cmdline"
    try:
        with open(cmdline, "rb") as f:
            if token.encode() not in f.read():
                return False  # not ours (the server already exited and the pid was reused)
    except FileNotFoundError:
        return False
    except OSError:
        pass  # no /proc (macOS): the token check is not possible, the pid is the one we were told
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def main(argv: "list[str]") -> int:
    role = argv[0] if argv else ""
    if role == "serve" and len(argv) == 4:
        serve(argv[1], float(argv[2]), argv[3])
        return 0
    if role == "client" and len(argv) == 6:
        print(json.dumps(client(argv[1], int(argv[2]), argv[3], int(argv[4]), int(argv[5]))))
        return 0
    if role == "stop" and len(argv) == 3:
        print("stopped" if stop(int(argv[1]), argv[2]) else "gone")
        return 0
    sys.stderr.write("usage: serve ADDRESS IDLE_S TOKEN | client ADDRESS PORT TOKEN PINGS BULK | stop PID TOKEN\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
