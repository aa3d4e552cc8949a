import json
import os
import time

# Read bandwidth with what every python3 has: bytes.find of an absent byte streams through the
# buffer with the C library's vectorised memchr. Buffer well above last-level caches; N forked
# readers scan their own slices at once for the multi-thread figure. Best of 3 passes.
size = 256 << 20
try:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            size = min(size, int(line.split()[1]) * 1024 // 8)
except OSError:
    pass
size = max(size, 32 << 20)
buf = b"\x01" * size
def scan(a, b):
    best = 1e9
    for _ in range(3):
        t = time.perf_counter(); buf.find(b"\x00", a, b); best = min(best, time.perf_counter() - t)
    return best
one = size / scan(0, size)
n = int(os.environ.get("EDGEDEPLOY_THREADS") or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
multi = one
if n > 1:
    step = size // n
    best = 1e9
    for _ in range(3):
        r, w = os.pipe(); pids = []
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                os.close(w); os.read(r, 1); buf.find(b"\x00", i * step, (i + 1) * step); os._exit(0)
            pids.append(pid)
        os.close(r); t = time.perf_counter(); os.write(w, b"x" * n); os.close(w)
        for pid in pids:
            os.waitpid(pid, 0)
        best = min(best, time.perf_counter() - t)
    multi = step * n / best
print(json.dumps({"read_1t_bytes_per_s": one, "read_bytes_per_s": max(one, multi), "threads": n, "buffer_bytes": size,
                  "method": "memchr scan (python3 bytes.find), best of 3"}))
