#!/usr/bin/env python3
"""edgedeploy runner: runs ON the device, stdlib + llama_cpp (+ numpy, which llama_cpp needs) only.

  bench  load, warm up, run fixed prompts; every number is measured here: load time, time to first
         token, prefill and decode speed, per-token latency p50/p90/p99, peak RSS (VmHWM),
         temperature before/after, throttling, energy per token where a power sensor exists.
  serve  exec llama-cpp-python's OpenAI-compatible server on this release's model and settings.
Telemetry goes to JSON lines (one event per line, format in events.py beside this file), flushed as
it happens, so a killed run still leaves what it measured so far. This release's settings (model
file, threads, context, prompts...) are in settings.json beside this file; this file is the same
in every bundle.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

HERE = os.path.dirname(os.path.abspath(__file__))

if TYPE_CHECKING:
    import llama_cpp
    import numpy
    import numpy.typing

    from toolchain.device import events
elif __package__:  # imported as toolchain.device.runner (host-side tests and tools)
    from . import events
else:
    # Run from a bundle: the events.py shipped beside this file, even where a toolchain package is
    # importable too (a local target). sys.path[0] is not this directory under PYTHONSAFEPATH, nor
    # when this file is loaded by path.
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import events

SETTINGS_FILE = "settings.json"
# While bench runs: "<pid>" on the first line, beside this file. The host stops a runner by it
# (a signal on the host side) and the next ship finds what a killed ship left (deploy/run.py).
PID_FILE = "runner.pid"
HOST_GONE_STATUS = 129  # as for SIGHUP: the session that started the runner is gone
KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids (stable ABI values)
BACKENDS = ("cpu", "cuda", "metal", "vulkan", "opencl")  # what a plan may place a model on
T = TypeVar("T")


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """settings.json, written by the host's package step."""

    model_file: str  # relative to this directory
    threads: int
    ctx: int
    kv_type: str  # a key of KV_TYPES
    flash_attn: bool
    use_mmap: bool
    n_batch: int
    decode_tokens: int
    model: str
    quant: str
    release_id: str
    prompts: list[str]
    backend: str = "cpu"  # the plan's placement (settings of older bundles lack it: the CPU)
    n_gpu_layers: int = 0  # llama.cpp's count: the output layer is the last one
    # A split across boards (llama.cpp's RPC backend): the rpc-servers as host:port in device
    # order, each device's slots, and the folder of the RPC-enabled libllama (LLAMA_CPP_LIB_PATH).
    rpc_servers: Sequence[str] = ()
    tensor_split: Sequence[float] = ()
    lib_dir: str = ""

    def start_settings(self) -> events.RunSettings:
        """What the start event reports as "settings" (the prompts are the release's, not a setting)."""
        return {"model_file": self.model_file, "threads": self.threads, "ctx": self.ctx, "kv_type": self.kv_type, "flash_attn": self.flash_attn,
                "use_mmap": self.use_mmap, "n_batch": self.n_batch, "decode_tokens": self.decode_tokens, "model": self.model, "quant": self.quant,
                "backend": self.backend, "n_gpu_layers": self.n_gpu_layers}


def _field(doc: Mapping[str, object], key: str, kind: type[T], where: str) -> T:
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {key} should be a {kind.__name__}, found {value!r}")
    return value


def parse_settings(doc: object, where: str = SETTINGS_FILE) -> Settings:
    """A settings document -> Settings; a missing or mistyped key raises ValueError naming it."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object")
    prompts = _field(doc, "prompts", list, where)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{where}: prompts should be a non-empty list of strings")
    kv_type = _field(doc, "kv_type", str, where)
    if kv_type not in KV_TYPES:
        raise ValueError(f"{where}: kv_type {kv_type!r} is not one of {', '.join(sorted(KV_TYPES))}")
    backend = doc.get("backend", "cpu")
    n_gpu_layers = doc.get("n_gpu_layers", 0)
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if not isinstance(n_gpu_layers, int) or isinstance(n_gpu_layers, bool) or not 0 <= n_gpu_layers <= 100000:
        raise ValueError(f"{where}: n_gpu_layers should be a count of layers, found {n_gpu_layers!r}")
    rpc = doc.get("rpc_servers", [])
    split = doc.get("tensor_split", [])
    lib_dir = doc.get("lib_dir", "")
    if not isinstance(rpc, list) or not all(isinstance(x, str) and re.match(r"^[A-Za-z0-9.:\[\]-]+:[0-9]+$", x) for x in rpc):
        raise ValueError(f"{where}: rpc_servers should be a list of host:port, found {rpc!r}")
    if not isinstance(split, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in split):
        raise ValueError(f"{where}: tensor_split should be a list of slot counts, found {split!r}")
    if not isinstance(lib_dir, str) or (rpc and not lib_dir):
        raise ValueError(f"{where}: lib_dir should name the RPC build's folder, found {lib_dir!r}")
    return Settings(
        backend=backend, n_gpu_layers=n_gpu_layers if backend != "cpu" or rpc else 0,
        rpc_servers=list(rpc), tensor_split=[float(x) for x in split], lib_dir=lib_dir,
        model_file=_field(doc, "model_file", str, where), threads=_field(doc, "threads", int, where),
        ctx=_field(doc, "ctx", int, where), kv_type=kv_type, flash_attn=_field(doc, "flash_attn", bool, where),
        use_mmap=_field(doc, "use_mmap", bool, where), n_batch=_field(doc, "n_batch", int, where),
        decode_tokens=_field(doc, "decode_tokens", int, where), model=_field(doc, "model", str, where),
        quant=_field(doc, "quant", str, where), release_id=_field(doc, "release_id", str, where), prompts=list(prompts),
    )


def read_settings(path: str | None = None) -> Settings:
    path = path or os.path.join(HERE, SETTINGS_FILE)
    with open(path) as f:
        return parse_settings(json.load(f), path)


def model_path(settings: Settings) -> str:
    return os.path.join(HERE, settings.model_file)


# --- system readings ------------------------------------------------------------------------


def read(path: str, default: str | None = None) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def read_number(path: str) -> float:
    """A sysfs number; a file that stops answering raises, which ends power sampling with an error."""
    value = read(path)
    if value is None:
        raise OSError(f"{path}: unreadable")
    return float(value)


def status_bytes(key: str, text: str | None = None) -> int | None:
    """A kB line of /proc/self/status (VmHWM, VmRSS) in bytes; None where there is no such line."""
    for line in (text if text is not None else read("/proc/self/status", "") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes() -> int:
    peak = status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def temperatures_c() -> dict[str, float]:
    temps: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        value = read(os.path.join(zone, "temp"))
        if value and value.lstrip("-").isdigit():
            temps[read(os.path.join(zone, "type")) or os.path.basename(zone)] = int(value) / 1000.0
    return temps


def hottest(temps: dict[str, float]) -> float | None:
    return max(temps.values()) if temps else None


def vcgencmd(*args: str) -> str:
    try:
        return subprocess.run(["vcgencmd", *args], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def parse_throttled(text: str) -> int | None:
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    return int(m.group(1), 16) if m else None


def throttled() -> int | None:
    """vcgencmd get_throttled bits (Raspberry Pi firmware), or None where there is no such tool."""
    return parse_throttled(vcgencmd("get_throttled"))


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, steal) clock ticks of all CPUs since boot (/proc/stat), or None off Linux."""
    text = read("/proc/stat") or ""
    parts = text.split("\n", 1)[0].split()
    if len(parts) < 9 or parts[0] != "cpu":
        return None
    v = [int(x) for x in parts[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return user + nice + system + irq + softirq, steal


class BusyMeter:
    """What else ran on the device while decode was timed: other processes' CPU seconds (all
    CPUs' busy time less this process's own), hypervisor steal, and the load average. On a shared
    board these, not the model, explain a slow mean."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.t0, self.own0, self.cpu0 = time.monotonic(), self._own(), cpu_jiffies()
        self.load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def result(self) -> dict[str, float | None]:
        wall, own, cpu = time.monotonic() - self.t0, self._own() - self.own0, cpu_jiffies()
        other = steal = None
        if cpu is not None and self.cpu0 is not None:
            other = max(0.0, (cpu[0] - self.cpu0[0]) / self.hz - own)
            steal = max(0.0, (cpu[1] - self.cpu0[1]) / self.hz)
        return {"bench_wall_s": wall, "other_cpu_s": other, "steal_s": steal, "load_before": self.load0,
                "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


COOL_ABOVE_C, COOL_TO_C, COOL_MAX_S = 70.0, 65.0, 120.0


def cool_down() -> float:
    """A hot board throttles within seconds of a bench: wait (at most COOL_MAX_S) until it is
    below COOL_TO_C. Returns the seconds waited."""
    start = time.monotonic()
    t = hottest(temperatures_c())
    if t is None or t < COOL_ABOVE_C:
        return 0.0
    while t is not None and t >= COOL_TO_C and time.monotonic() - start < COOL_MAX_S:
        time.sleep(5)
        t = hottest(temperatures_c())
    return time.monotonic() - start


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- latency maths --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default); 0.0 for no values."""
    s = sorted(values)
    if not s:
        return 0.0
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def sustained_tokens_per_s(ms: Sequence[float]) -> float:
    """Decode speed over the last quarter of the per-token latencies: what sustained use settles to."""
    tail = ms[-max(1, len(ms) // 4):]
    return 1000.0 / (sum(tail) / len(tail))


# --- power sensors: each gives watts (or a cumulative joule counter) ------------------------


@dataclass
class PowerSource:
    name: str
    period: float  # seconds between samples
    watts: Callable[[], float | None] | None = None  # None: no reading yet
    counter: Callable[[], float] | None = None  # cumulative joules (RAPL), wrapping at wrap_j
    wrap_j: float = 0.0
    close: Callable[[], None] | None = None


def rapl_source() -> PowerSource | None:
    path = "/sys/class/powercap/intel-rapl:0/energy_uj"
    if read(path) is None:
        return None
    wrap = float(read("/sys/class/powercap/intel-rapl:0/max_energy_range_uj", "0") or 0)
    return PowerSource("rapl package-0", 0.2, counter=lambda: read_number(path) / 1e6, wrap_j=wrap / 1e6)


def hwmon_source() -> PowerSource | None:
    files = sorted(glob.glob("/sys/class/hwmon/hwmon*/power*_input"))
    if not files:
        return None
    return PowerSource("hwmon " + ",".join(files), 0.2, watts=lambda: sum(float(read(f, "0") or 0) for f in files) / 1e6)


def pmic_watts(text: str) -> float:
    """Pi 5 `vcgencmd pmic_read_adc`: the sum of current x voltage over the rails that have both."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for name, kind, value in re.findall(r"(\w+)_([AV]) \w+\(\d+\)=([\d.]+)", text):
        (amps if kind == "A" else volts)[name] = float(value)
    return sum(a * volts[n] for n, a in amps.items() if n in volts)


def pmic_source() -> PowerSource | None:
    if "current(" not in vcgencmd("pmic_read_adc"):  # Pi 5 firmware only
        return None
    return PowerSource("vcgencmd pmic_read_adc", 1.0, watts=lambda: pmic_watts(vcgencmd("pmic_read_adc")))


def android_battery_source() -> PowerSource | None:
    base = "/sys/class/power_supply/battery"
    if read(base + "/current_now") is None or read(base + "/voltage_now") is None:
        return None

    def watts() -> float:  # current_now is in uA (sign differs by vendor), voltage_now in uV
        return abs(read_number(base + "/current_now")) * read_number(base + "/voltage_now") / 1e12

    return PowerSource("battery current_now x voltage_now", 0.5, watts=watts)


def tegrastats_watts(line: str) -> float | None:
    """Board input power from one tegrastats line: 'VDD_IN 17946mW/15710mW' (JetPack 5/6) or
    'VDD_IN 3140/3208' (TX2 era); the sum of the rails when there is no input rail."""
    rails = {n: float(v) for n, v in re.findall(r"\b((?:VDD|POM)_\w+) (\d+)(?:mW)?/\d+(?:mW)?", line)}
    if not rails:
        return None
    total = rails.get("VDD_IN", rails.get("POM_5V_IN"))
    return (total if total is not None else sum(rails.values())) / 1000.0


class Tegrastats:
    """Jetson: tegrastats prints 'VDD_IN 5120mW/5120mW' (or POM_5V_IN) each interval."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["tegrastats", "--interval", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.watts_now: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.watts_now = tegrastats_watts(line)

    def close(self) -> None:
        self.proc.kill()


def tegrastats_source() -> PowerSource | None:
    import shutil

    if not shutil.which("tegrastats"):
        return None
    try:
        t = Tegrastats()
    except OSError:
        return None
    return PowerSource("tegrastats", 0.5, watts=lambda: t.watts_now, close=t.close)


PROBES: tuple[Callable[[], PowerSource | None], ...] = (rapl_source, hwmon_source, pmic_source, tegrastats_source, android_battery_source)


class PowerSampler:
    """Samples one power sensor in a background thread; energy_j(windows) integrates it."""

    def __init__(self) -> None:
        self.source: PowerSource | None = None
        for probe in PROBES:
            try:
                self.source = probe()
            except Exception:
                self.source = None
            if self.source:
                break
        self.samples: list[tuple[float, float]] = []  # (monotonic time, cumulative joules)
        self.stop = threading.Event()
        self.error: str | None = None
        if self.source:
            threading.Thread(target=self._run, args=(self.source,), daemon=True).start()

    def _run(self, src: PowerSource) -> None:
        total = 0.0
        last_t: float | None = None
        last_w: float | None = None
        last_c: float | None = None
        while not self.stop.is_set():
            try:
                now = time.monotonic()
                if src.counter is not None:
                    c = src.counter()
                    if last_c is not None:
                        total += c - last_c if c >= last_c else c + src.wrap_j - last_c
                    last_c = c
                elif src.watts is not None:
                    w = src.watts()
                    if w is None:  # no reading yet (tegrastats prints its first line after one interval)
                        self.stop.wait(src.period)
                        continue
                    if last_w is not None and last_t is not None:
                        total += (w + last_w) / 2.0 * (now - last_t)
                    last_t, last_w = now, w
                self.samples.append((now, total))
            except Exception as exc:  # a sensor that stops answering ends sampling, not the run
                self.error = str(exc)[:200]
                return
            self.stop.wait(src.period)

    def _at(self, t: float) -> float | None:
        s = self.samples
        if len(s) < 2 or t < s[0][0] or t > s[-1][0]:
            return None
        for (t0, e0), (t1, e1) in zip(s, s[1:]):
            if t0 <= t <= t1:
                return e0 + (e1 - e0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return None

    def wait_until(self, t: float, limit_s: float = 3.0) -> bool:
        """Block until a sample at or after monotonic time t exists (bounded), so windows are covered."""
        deadline = time.monotonic() + limit_s
        while self.source and not self.stop.is_set() and time.monotonic() < deadline:
            if self.samples and self.samples[-1][0] >= t:
                return True
            time.sleep(0.05)
        return bool(self.samples) and self.samples[-1][0] >= t

    def energy_j(self, windows: Sequence[tuple[float, float]]) -> float | None:
        """Joules over the windows; None when any edge lies outside what was sampled (no guess)."""
        total = 0.0
        for t0, t1 in windows:
            a, b = self._at(t0), self._at(t1)
            if a is None or b is None:
                return None
            total += b - a
        return total

    def close(self) -> None:
        self.stop.set()
        if self.source and self.source.close:
            self.source.close()


class RssWatcher:
    """Emits a 'memory' event each time VmHWM grows by a step, so a run killed for memory
    still tells how high it got."""

    def __init__(self, out: str, step: int = 16 << 20, period: float = 0.1) -> None:
        self.out, self.step, self.period, self.stop = out, step, period, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        last = 0
        while not self.stop.wait(self.period):
            peak = status_bytes("VmHWM") or 0
            if peak >= last + self.step:
                last = peak
                events.emit(self.out, events.MEMORY, peak_rss_bytes=peak)


# --- model and decode loop ------------------------------------------------------------------


class LoadLog:
    """llama.cpp's own log of a model load, kept instead of printed: it is where llama.cpp says which
    device each buffer went to and how many layers it offloaded (the API has no call for that)."""

    def __init__(self) -> None:
        import llama_cpp

        self.lines: list[str] = []
        self._lc = llama_cpp

        def keep(level: int, text: bytes, user_data: object) -> None:
            if len(self.lines) < 20000:
                self.lines.append(text.decode("utf-8", errors="replace"))

        self._cb = llama_cpp.llama_log_callback(keep)  # referenced: a collected callback would crash llama.cpp
        llama_cpp.llama_log_set(self._cb, ctypes.c_void_p(0))

    def placement(self) -> dict[str, object]:
        return placement_from_log("".join(self.lines))


# "load_tensors:        CUDA0 model buffer size =  6507.27 MiB"; CPU, CPU_Mapped, CPU_REPACK and
# CUDA_Host (pinned host memory) buffers are host RAM; Metal_Mapped is the GPU's view of the file.
_BUFFER = re.compile(r"^(?:\[[^\]]*\] \w )?\S+:\s+(\S+)\s+(?:model|KV|compute|output|RS) buffer size =\s+([\d.]+) MiB", re.MULTILINE)


def placement_from_log(text: str) -> dict[str, object]:
    """What a load's log says ran where: backend, device, layers offloaded, bytes on the devices."""
    m = re.search(r"offloaded (\d+)/(\d+) layers to GPU", text)  # llama.cpp's load_tensors says it so
    dev = re.search(r"using device (\S+) \((.*?)\)(?: \([^)]*\))? - (\d+) MiB free", text)
    on_device = 0.0
    names: list[str] = []
    for name, mib in _BUFFER.findall(text):
        if name.upper() == "CPU" or name.upper().startswith("CPU_") or name.endswith("_Host"):
            continue
        name = name[:-len("_Mapped")] if name.endswith("_Mapped") else name  # Python 3.8: no removesuffix
        on_device += float(mib)
        if name not in names:
            names.append(name)
    device = dev.group(1) if dev else (names[0] if names else "")
    offloaded = int(m.group(1)) if m else 0
    return {"backend": backend_of(device) if offloaded or names else "cpu", "device": device,
            "device_description": dev.group(2) if dev else "",
            "gpu_layers_offloaded": offloaded, "gpu_layers_total": int(m.group(2)) if m else 0,
            "device_memory_bytes": int(on_device * (1 << 20))}


def backend_of(device: str) -> str:
    """llama.cpp device name -> planner backend: CUDA0 -> cuda, Vulkan0 -> vulkan, MTL0/Metal -> metal."""
    d = device.lower()
    for prefix, backend in (("cuda", "cuda"), ("vulkan", "vulkan"), ("mtl", "metal"), ("metal", "metal"),
                            ("gpuopencl", "opencl"), ("opencl", "opencl")):
        if d.startswith(prefix):
            return backend
    return d.rstrip("0123456789") or "cpu"


RPC_LIBS = ("libggml-base.so.0", "libggml-cpu.so.0", "libggml-rpc.so.0", "libggml.so.0")  # deploy/rpc.py's LIBS, in link order


def use_rpc_build(settings: Settings) -> None:
    """Before llama_cpp is imported: its libllama from the RPC build (LLAMA_CPP_LIB_PATH), the ggml
    libraries it links loaded first by path (the loader then finds them by soname), and the
    rpc-servers registered as devices through ggml's registry, as llama.cpp's --rpc does
    (common/arg.cpp: add_rpc_devices); llama-cpp-python 0.3.x has no working rpc_servers."""
    if not settings.rpc_servers:
        return
    os.environ["LLAMA_CPP_LIB_PATH"] = settings.lib_dir
    libs = [ctypes.CDLL(os.path.join(settings.lib_dir, name), mode=ctypes.RTLD_GLOBAL) for name in RPC_LIBS]
    ggml = libs[-1]
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    fn = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server") if reg else None
    if not fn:
        raise RuntimeError(f"the llama.cpp build in {settings.lib_dir} has no RPC backend")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(fn)
    for endpoint in settings.rpc_servers:
        server_reg = add_server(endpoint.encode())
        if not server_reg:
            raise RuntimeError(f"rpc-server {endpoint} did not answer")
        ggml.ggml_backend_register(server_reg)


def load(settings: Settings) -> llama_cpp.Llama:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=model_path(settings),
        n_gpu_layers=settings.n_gpu_layers,
        tensor_split=list(settings.tensor_split) or None,
        n_ctx=settings.ctx,
        n_threads=settings.threads,
        n_threads_batch=settings.threads,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_batch,
        use_mmap=settings.use_mmap,
        type_k=KV_TYPES[settings.kv_type],
        type_v=KV_TYPES[settings.kv_type],
        flash_attn=settings.flash_attn,
        swa_full=False,  # sliding-window layers keep their window only, as the plan sized them
        verbose=False,
    )


class Decoder:
    """Greedy decoding on llama.cpp's C API: one preallocated batch, argmax on the raw logits.

    Llama.eval() keeps Python-side bookkeeping per call, and its scores array is only filled with
    logits_all; reading logits through a zero-copy numpy view of llama_get_logits_ith keeps the
    per-token cost at what llama.cpp itself spends.
    """

    def __init__(self, llm: llama_cpp.Llama, n_batch: int) -> None:
        import llama_cpp
        import numpy as np

        self.lc, self.np = llama_cpp, np
        self.ctx = llm.ctx
        self.n_vocab = llm.n_vocab()
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.pos = 0
        self._views: dict[int | None, numpy.typing.NDArray[Any]] = {}

    def clear(self) -> None:
        mem = self.lc.llama_get_memory(self.ctx)
        if mem is not None:
            self.lc.llama_memory_clear(mem, True)
        self.pos = 0

    def _decode(self, tokens: Sequence[int]) -> int:
        b = self.batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = self.pos + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 0
            b.logits[len(chunk) - 1] = 1
            rc = self.lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at position {self.pos}")
            self.pos += len(chunk)
        return self._argmax()

    def _argmax(self) -> int:
        ptr = self.lc.llama_get_logits_ith(self.ctx, -1)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        view = self._views.get(addr)
        if view is None:
            view = self._views[addr] = self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return int(view.argmax())

    def prefill(self, tokens: Sequence[int]) -> int:
        return self._decode(tokens)

    def step(self, token: int) -> int:
        b = self.batch
        b.n_tokens = 1
        b.token[0] = token
        b.pos[0] = self.pos
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError(f"llama_decode failed at position {self.pos}")
        self.pos += 1
        return self._argmax()

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)


def bench(args: argparse.Namespace, settings: Settings) -> int:
    out: str = args.out
    cooled_s = cool_down()
    temps_before = temperatures_c()
    throttled_before = throttled()
    events.emit(out, events.START, mode="bench", settings=settings.start_settings(), pid=os.getpid(),
                boot_id=read("/proc/sys/kernel/random/boot_id"))
    watcher = RssWatcher(out)
    use_rpc_build(settings)
    import llama_cpp

    model_sha = sha256_of(os.path.realpath(model_path(settings)))
    log = LoadLog()
    t0 = time.perf_counter()
    llm = load(settings)
    load_s = time.perf_counter() - t0
    placed = log.placement()
    events.emit(out, events.LOADED, load_s=load_s, peak_rss_bytes=peak_rss_bytes(), **placed)
    dec = Decoder(llm, settings.n_batch)

    # Warm-up: page the weights in and let the CPU clocks settle before measuring.
    token = dec.prefill(llm.tokenize(settings.prompts[0].encode(), add_bos=True)[:16])
    for _ in range(args.warmup):
        token = dec.step(token)

    # Memory is allocated by now (weights, KV cache, compute buffers): stop watching, so no extra
    # thread wakes up on the cores while decode is timed.
    watcher.stop.set()
    power = PowerSampler()
    power.wait_until(time.monotonic())  # a first reading before the first window opens
    throttled_any = throttled_before or 0
    prefill_tokens, prefill_s = 0, 0.0
    ttfts: list[float] = []
    latencies: list[float] = []
    windows: list[tuple[float, float]] = []
    deadline = time.monotonic() + args.sustained_s if args.sustained_s else None
    rounds = 0
    busy = BusyMeter()
    while True:
        for prompt in settings.prompts:
            dec.clear()
            tokens = llm.tokenize(prompt.encode(), add_bos=True)
            t = time.perf_counter()
            token = dec.prefill(tokens)
            first = time.perf_counter() - t
            prefill_s += first
            prefill_tokens += len(tokens)
            ttfts.append(first)
            w0 = time.monotonic()
            for _ in range(args.tokens):
                t = time.perf_counter()
                token = dec.step(token)
                latencies.append(time.perf_counter() - t)
            windows.append((w0, time.monotonic()))
        rounds += 1
        now_throttled = throttled()
        throttled_any |= now_throttled or 0
        if deadline is None or time.monotonic() >= deadline:
            break
        events.emit(out, events.PROGRESS, rounds=rounds, decode_tokens=len(latencies), peak_rss_bytes=peak_rss_bytes(),
                    temperature_c=hottest(temperatures_c()), throttled=now_throttled)
    busy_result = busy.result()
    energy = power.energy_j(windows) if power.source and power.wait_until(windows[-1][1]) else None
    power.close()
    dec.close()
    throttled_after = throttled()
    ms = [x * 1000.0 for x in latencies]
    result: events.Result = {
        "load_s": load_s,
        "ttft_s": sum(ttfts) / len(ttfts),
        "prefill_tokens_per_s": prefill_tokens / prefill_s,
        "decode_tokens_per_s": len(latencies) / sum(latencies),
        "decode_ms_p50": percentile(ms, 0.5),
        "decode_ms_p90": percentile(ms, 0.9),
        "decode_ms_p99": percentile(ms, 0.99),
        "sustained_decode_tokens_per_s": sustained_tokens_per_s(ms),
        "sustained_s": args.sustained_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "llama_cpp": llama_cpp.__version__,
        "threads": settings.threads,
        "ctx": settings.ctx,
        "kv_type": settings.kv_type,
        "model_sha256": model_sha,
        "prompt_tokens": prefill_tokens,
        "decode_tokens": len(latencies),
        "temperature_before_c": hottest(temps_before),
        "temperature_after_c": hottest(temperatures_c()),
        "throttled_before": throttled_before,
        "throttled_after": throttled_after,
        "throttled_during": throttled_any | (throttled_after or 0) if throttled_before is not None else None,
        "power_source": power.source.name if power.source else None,
        "power_error": power.error,
        "energy_j": energy,
        "energy_j_per_token": energy / len(latencies) if energy is not None and latencies else None,
        "latencies_ms": [round(x, 3) for x in ms],
        "rounds": rounds,
        "boot_id": read("/proc/sys/kernel/random/boot_id"),
        "bench_wall_s": busy_result["bench_wall_s"] or 0.0,
        "other_cpu_s": busy_result["other_cpu_s"],
        "steal_s": busy_result["steal_s"],
        "load_before": busy_result["load_before"],
        "load_after": busy_result["load_after"],
        "cooled_s": cooled_s,
        "backend": str(placed["backend"]),
        "device": str(placed["device"]),
        "gpu_layers_offloaded": int(str(placed["gpu_layers_offloaded"])),
        "gpu_layers_total": int(str(placed["gpu_layers_total"])),
        "device_memory_bytes": int(str(placed["device_memory_bytes"])),
    }
    events.emit(out, events.RESULT, **result)
    return 0


def serve_argv(settings: Settings, host: str, port: int) -> list[str]:
    """llama_cpp.server's command line for this release's model and settings."""
    kv = str(KV_TYPES[settings.kv_type])
    return [sys.executable, "-m", "llama_cpp.server", "--model", model_path(settings), "--model_alias", settings.model,
            "--n_ctx", str(settings.ctx), "--n_gpu_layers", str(settings.n_gpu_layers),
            "--n_threads", str(settings.threads), "--n_threads_batch", str(settings.threads),
            "--n_batch", str(settings.n_batch), "--use_mmap", str(settings.use_mmap), "--flash_attn", str(settings.flash_attn),
            "--type_k", kv, "--type_v", kv,
            # logits_all would keep ctx x vocab floats (800 MB at 4k context and a 49k vocabulary).
            "--logits_all", "False", "--host", host, "--port", str(port)]


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Replace this process with llama-cpp-python's server (its [server] extra must be installed)."""
    try:
        import llama_cpp.server.app  # noqa: F401  (fails early and clearly when the extra is missing)
    except ImportError as exc:
        print(f"edgedeploy runner: llama_cpp.server cannot start: {exc} (install llama-cpp-python[server])", file=sys.stderr, flush=True)
        return 3
    os.execv(sys.executable, serve_argv(settings, args.host, args.port))
    return 0  # not reached


def parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"edgedeploy runner for release {settings.release_id} ({settings.model} {settings.quant}).\n\n"
                                + (__doc__ or ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("bench", help="load, warm up, measure")
    b.add_argument("--out", default=os.path.join(HERE, "telemetry.jsonl"))
    b.add_argument("--tokens", type=int, default=settings.decode_tokens)
    b.add_argument("--warmup", type=int, default=8)
    b.add_argument("--sustained-s", type=float, default=0.0)
    b.add_argument("--watch-stdin", action="store_true",
                   help="stop when stdin reaches EOF: the host holds it open, so EOF means the host process died")
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (llama_cpp.server)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # A missing or broken settings.json is a broken bundle: a traceback (exit 1) into runner.log,
    # as any failure before the first telemetry event.
    settings = read_settings()
    args = parser(settings).parse_args(argv)
    if args.mode == "serve":
        return serve(args, settings)
    pid_file = os.path.join(HERE, PID_FILE)
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    # SIGTERM (the host stopping this run) unwinds through the finally below, which clears the pid file.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.watch_stdin:
        threading.Thread(target=watch_host, args=(args.out, pid_file), name="watch-host", daemon=True).start()
    try:
        return bench(args, settings)
    except SystemExit as exc:
        events.emit(args.out, events.ERROR, kind="stopped", message=f"stopped by SIGTERM (exit {exc.code})",
                    peak_rss_bytes=peak_rss_bytes())
        raise
    except MemoryError:
        events.emit(args.out, events.ERROR, kind="oom", message="MemoryError", peak_rss_bytes=peak_rss_bytes())
        return 137
    except Exception as exc:  # reported as telemetry, so a failed run still has a report
        events.emit(args.out, events.ERROR, kind=type(exc).__name__, message=str(exc)[:500], peak_rss_bytes=peak_rss_bytes())
        return 1
    finally:
        try:
            os.unlink(pid_file)
        except OSError:
            pass


def watch_host(out: str, pid_file: str) -> None:
    """Stop this runner once stdin ends: the host held it open, so EOF means the host process (or
    the SSH session) is gone and nobody will collect the result. Nothing is read from stdin
    otherwise, so a blocking read costs nothing. The pid file stays, saying why, for the next ship."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        # Nobody reads our stdout any more: writing there would fail (EPIPE) before we are done.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        events.emit(out, events.ERROR, kind="host_gone", message="the host that started this run went away; stopped")
        with open(pid_file, "a") as f:
            f.write(f"stopped itself at {when}: its host went away\n")
    except OSError:
        pass
    os._exit(HOST_GONE_STATUS)  # now: the main thread may be inside llama.cpp for a while yet


if __name__ == "__main__":
    sys.exit(main())
