"""Give the target a Python that imports llama_cpp, with no internet needed on the board.

Wheels live on the host in a wheelhouse, one folder per kind of board:
    <user cache>/wheelhouse/<machine>-<libc>-cp<XY>-<cpu features>/
The key is what decides whether a wheel runs (and runs well) there: the interpreter's machine,
its C library, the Python version (the dependencies are CPython-specific) and the CPU features
llama.cpp compiles for (it builds for the native CPU).

The first board of a kind fills its folder: when the board is the same kind as this machine, from
this machine's own llama-cpp-python wheel (pip's wheel cache, else a local `pip wheel`) plus
`pip download` of its dependencies; otherwise by `pip wheel` on the board itself (can take tens of
minutes on a Pi), pulled back here. Every board of that kind then gets the folder pushed and
pip-installs it offline into a venv under the deploy root (`<root>/runtime/venv`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from toolchain.core import settings
from toolchain.core.errors import BadInputError, TargetError, fetch_error
from toolchain.core.identifiers import check_slug, inside
from toolchain.core.paths import cache_dir
from toolchain.transports.base import Transport
from toolchain.transports.local import LocalTransport

Log = Callable[[str], None]
DIST = "llama-cpp-python"
BUILD_TIMEOUT_S = 4 * 3600.0  # a Pi Zero 2 takes hours
POLL_S = 10.0
MAX_WHEEL_BYTES = 1 << 30  # a llama-cpp-python wheel is tens of MB; a board handing back more is refused
SUPPORTED_MIN, SUPPORTED_BELOW = (0, 3, 16), (0, 4, 0)  # as pyproject's llama-cpp-python range: the runner's C API calls
# CPU flags that change which ggml kernels a native build uses (x86 /proc/cpuinfo flags, ARM Features).
KERNEL_FLAGS = (
    "sse3", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "amx_int8", "amx_bf16", "neon", "asimd", "fphp", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16", "vfpv4",
)

# The CMake switch per llama.cpp backend (llama-cpp-python's build reads CMAKE_ARGS). Metal is on
# by default in macOS builds; the switch keeps it explicit. A backend build is keyed apart from
# the CPU one in the wheelhouse: same board kind, different library.
CMAKE_FLAGS = {"cpu": "", "cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on", "vulkan": "-DGGML_VULKAN=on",
               "opencl": "-DGGML_OPENCL=on"}
# Per board kind, what the backend's build needs beyond its switch.
JETSON_CUDA = "/usr/local/cuda"  # JetPack installs its CUDA toolkit here (nvcc is not on PATH by default)


def build_env(backend: str, rt: Runtime, extra: str = "") -> dict[str, str]:
    """The environment a `pip wheel llama-cpp-python` needs to build `backend` for the board `rt`."""
    if backend not in CMAKE_FLAGS:
        raise BadInputError(f"unknown backend {backend!r}", f"use one of {', '.join(CMAKE_FLAGS)}")
    if backend == "cpu":
        return {}
    args = [CMAKE_FLAGS[backend]]
    env: dict[str, str] = {}
    if backend == "cuda" and rt.machine == "aarch64" and rt.libc.startswith("glibc"):
        # Jetson: JetPack's toolkit, Orin's compute capability 8.7 (building every arch takes hours on the board)
        env["CUDACXX"] = f"{JETSON_CUDA}/bin/nvcc"
        args.append("-DCMAKE_CUDA_ARCHITECTURES=87")
    if backend == "opencl" and rt.libc == "bionic":
        args.append("-DGGML_OPENCL_USE_ADRENO_KERNELS=ON")  # Adreno's tuned kernels (llama.cpp's OpenCL backend targets them)
    if extra:
        args.append(extra)
    env["CMAKE_ARGS"] = " ".join(args)
    return env


# Runs with a target python: what a wheel must match, and what is importable already.
_RUNTIME = r"""
import importlib.util, json, os, platform, subprocess, sys
libc = "unknown"
name, ver = platform.libc_ver()
if name == "glibc" and ver:
    libc = "glibc" + ver
elif os.path.exists("/system/build.prop") or hasattr(sys, "getandroidapilevel"):
    libc = "bionic"
else:
    try:
        out = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stderr
        libc = "musl" if "musl" in out.lower() else libc
    except OSError:
        pass
flags = set()
try:
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        if k.strip().lower() in ("flags", "features"):
            flags.update(v.split())
except OSError:
    pass
r = {"python": sys.executable, "version": platform.python_version(), "machine": platform.machine(), "libc": libc,
     "flags": sorted(flags), "pip": importlib.util.find_spec("pip") is not None,
     "venv": importlib.util.find_spec("ensurepip") is not None, "llama_cpp": None, "server": False}
try:
    import llama_cpp
    r["llama_cpp"] = llama_cpp.__version__
    lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    names = os.listdir(lib) if os.path.isdir(lib) else []
    r["backends"] = sorted({b for b in ("cuda", "vulkan", "metal", "opencl") for n in names if ("ggml-" + b) in n.lower()} | {"cpu"})
    r["server"] = all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"))
except Exception as exc:
    r["error"] = "%s: %s" % (type(exc).__name__, str(exc)[:200])
print(json.dumps(r))
"""


@dataclass(frozen=True)
class Runtime:
    """What one python on the target is, and what it can import."""

    python: str
    version: str
    machine: str
    libc: str
    flags: tuple[str, ...]
    pip: bool
    venv: bool
    llama_cpp: str | None
    server: bool
    backends: tuple[str, ...] = ()  # llama.cpp backend libraries its llama_cpp ships (libggml-vulkan.so -> vulkan)

    @property
    def key(self) -> str:
        major_minor = "".join(self.version.split(".")[:2])
        feats = "+".join(f for f in KERNEL_FLAGS if f in self.flags) or "generic"
        return f"{self.machine}-{self.libc}-cp{major_minor}-{feats}"

    def ready(self, version: str, *, server: bool, backend: str = "cpu") -> bool:
        """A llama_cpp the runner can use: this toolchain's version, or one in the range it supports
        (a user's own build, e.g. with a GPU backend, is kept rather than replaced), with the
        plan's backend compiled in (Metal is built into the macOS library itself)."""
        usable = self.llama_cpp == version or _in_supported_range(self.llama_cpp)
        has = backend == "cpu" or backend in self.backends or (backend == "metal" and self.machine == "arm64" and "darwin" in self.libc)
        return usable and has and (self.server or not server)


def _in_supported_range(version: str | None) -> bool:
    parts = re.findall(r"\d+", version or "")[:3]
    return len(parts) == 3 and SUPPORTED_MIN <= tuple(int(p) for p in parts) < SUPPORTED_BELOW


@dataclass(frozen=True)
class Provisioned:
    python: str  # the interpreter the runner should use on the target
    key: str
    action: str  # present | installed
    source: str  # where the wheel came from: already there | wheelhouse | this machine | built on the board


def wheelhouse_dir() -> Path:
    return settings.wheelhouse() or cache_dir() / "wheelhouse"


def wheels_for(rt: Runtime, display: str, backend: str = "cpu") -> Path:
    """The wheelhouse folder of `rt`'s kind. The key is made of what a board's Python printed, so
    each part must be a slug and the folder must stay inside the wheelhouse (a board reporting
    machine "../../x" would otherwise put wheels, later pushed to every board of a kind, anywhere)."""
    for name, value in (("machine", rt.machine), ("libc", rt.libc), ("version", rt.version)):
        check_slug(value, f"{display}: the target's Python reports {name}",
                   "the target's Python printed something no real interpreter reports; check the python: of the target")
    key = check_slug(rt.key + ("" if backend == "cpu" else f"-{backend}"), f"{display}: wheelhouse key")
    return inside(wheelhouse_dir(), key, "wheelhouse key")


def toolchain_llama_version() -> str:
    """The runner templates are written against the llama-cpp-python this toolchain runs."""
    return metadata.version(DIST)


def inspect_python(transport: Transport, python: str) -> Runtime | None:
    """None when `python` does not run there."""
    res = transport.run([python, "-c", _RUNTIME], timeout=60, check=False)
    try:
        d = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError, RecursionError):
        return None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("python", "version", "machine", "libc")):
        return None  # not what _RUNTIME prints
    flags = d.get("flags")
    d["flags"] = [f for f in flags if isinstance(f, str)] if isinstance(flags, list) else []
    d["llama_cpp"] = d.get("llama_cpp") if isinstance(d.get("llama_cpp"), str) else None
    backends = d.get("backends")
    return Runtime(python=str(d["python"]), version=str(d["version"]), machine=str(d["machine"]), libc=str(d["libc"]),
                   flags=tuple(d.get("flags") or ()), pip=bool(d.get("pip")), venv=bool(d.get("venv")),
                   llama_cpp=d.get("llama_cpp"), server=bool(d.get("server")),
                   backends=tuple(b for b in backends if b in CMAKE_FLAGS) if isinstance(backends, list) else ())


def host_runtime() -> Runtime:
    rt = inspect_python(LocalTransport(), sys.executable)
    assert rt is not None, "this interpreter answers"
    return rt


@dataclass
class Provisioner:
    transport: Transport
    root: str
    log: Log = lambda _m: None
    offline: bool = False  # the wheelhouse only: no pip download here, no build on the board
    version: str = ""
    backend: str = "cpu"  # the plan's: its llama.cpp backend must be compiled in

    def __post_init__(self) -> None:
        self.version = self.version or toolchain_llama_version()

    @property
    def venv(self) -> str:
        return f"{self.root}/runtime/venv"

    def ensure(self, python: str, *, server: bool = False) -> Provisioned:
        """A python on the target that imports llama_cpp==version (and its server when asked)."""
        rt = inspect_python(self.transport, python)
        if rt is None:
            raise TargetError(f"{self.transport.display}: {python} does not run on the target",
                              "install Python 3 there (e.g. apt install python3 python3-venv), or set python: in the target's YAML")
        if rt.ready(self.version, server=server, backend=self.backend):
            return Provisioned(python, rt.key, "present", "already there")
        ours = inspect_python(self.transport, f"{self.venv}/bin/python")
        if ours is not None and ours.ready(self.version, server=server, backend=self.backend):
            self.log(f"  using llama-cpp-python {ours.llama_cpp} provisioned earlier in {self.venv}")
            return Provisioned(ours.python, ours.key, "present", "already there")
        have = f"llama-cpp-python {rt.llama_cpp}" if rt.llama_cpp else "no llama_cpp"
        lacks = "" if rt.ready(self.version, server=False, backend=self.backend) or not rt.llama_cpp else f" without {self.backend}"
        self.log(f"  {python} on the target has {have}{lacks}{'' if rt.server or not server else ' (no server extra)'}: "
                 f"installing llama-cpp-python {self.version}{'' if self.backend == 'cpu' else ' with ' + self.backend} for {rt.key}")
        venv_python = self._make_venv(rt)
        extras = "[server]" if server else ""
        wheels = wheels_for(rt, self.transport.display, self.backend)
        source = "wheelhouse"
        if not self._has_llama_wheel(wheels):
            source = fill_once(wheels, lambda: self._fill_wheelhouse(rt, wheels, venv_python, extras),
                               lambda: self._has_llama_wheel(wheels), self.log, self.transport.display)
        self._push_and_install(wheels, venv_python, extras)
        done = inspect_python(self.transport, venv_python)
        if done is None or not done.ready(self.version, server=server, backend=self.backend):
            raise TargetError(f"{self.transport.display}: llama-cpp-python still not importable after installing into {self.venv}",
                              f"see pip's output above; the wheels are in {wheels}")
        self.log(f"  llama-cpp-python {self.version} installed in {self.venv} (from {source})")
        return Provisioned(venv_python, rt.key, "installed", source)

    # --- the wheelhouse ---

    def _has_llama_wheel(self, wheels: Path) -> bool:
        return any(wheels.glob(f"llama_cpp_python-{self.version}-*.whl"))

    def _fill_wheelhouse(self, rt: Runtime, wheels: Path, venv_python: str, extras: str) -> str:
        if rt.key == host_runtime().key:
            if self.offline:
                raise self._missing(wheels, "(--offline: not downloading dependencies)")
            wheels.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local_wheel(self.version, self.log, backend=self.backend, env=build_env(self.backend, rt, settings.cmake_args())),
                         wheels)
            pip_download(wheels, f"{DIST}{extras}=={self.version}", self.log)
            (wheels / "features.txt").write_text(" ".join(rt.flags) + "\n")
            return "this machine"
        if self.offline:
            raise self._missing(wheels, "(--offline: not building on the board)")
        self._build_on_board(venv_python, wheels, f"{DIST}[server]=={self.version}",  # the extra too: built once per kind
                             build_env(self.backend, rt, settings.cmake_args()))
        (wheels / "features.txt").write_text(" ".join(rt.flags) + "\n")
        return "built on the board"

    def _missing(self, wheels: Path, why: str) -> BadInputError:
        return BadInputError(f"no llama-cpp-python {self.version} wheel for this kind of board in {wheels} {why}",
                             "run once without --offline (the first board of a kind builds it), or copy its wheels there")

    def _build_on_board(self, venv_python: str, wheels: Path, requirement: str, env: dict[str, str] | None = None) -> None:
        build = f"{self.root}/runtime/build"
        self.log(f"  building {requirement} on the board (the first board of a kind; tens of minutes on a Pi)")
        self.transport.run(["sh", "-c", 'rm -rf "$1" && mkdir -p "$1/wheels"', "sh", build], timeout=60)
        # Detached, so a dropped connection does not kill a half-hour build; polled through its log.
        env = env or {}
        # The backend's CMake switches travel as arguments ($4, $5), never spliced into the script;
        # a backend build must not reuse a CPU wheel from the board's pip cache (--no-cache-dir).
        self.transport.run(["sh", "-c",
                            'cd "$1" && nohup env CMAKE_ARGS="$4" CUDACXX="$5" sh -c \'[ -n "$CUDACXX" ] || unset CUDACXX; '
                            '"$0" -m pip wheel --progress-bar off $2 --wheel-dir wheels "$1"; echo $? > rc\' '
                            '"$2" "$3" "$6" </dev/null >build.log 2>&1 &',
                            "sh", build, venv_python, requirement, env.get("CMAKE_ARGS", ""), env.get("CUDACXX", ""),
                            "--no-cache-dir" if env else ""], timeout=60)
        start = time.monotonic()
        while True:
            time.sleep(POLL_S)
            out = self.transport.run(["sh", "-c", 'cat "$1/rc" 2>/dev/null; echo; tail -n 1 "$1/build.log" 2>/dev/null', "sh", build],
                                     timeout=60, check=False).stdout
            rc, _, last = out.partition("\n")
            elapsed = time.monotonic() - start
            if rc.strip():
                break
            self.log(f"  building on the board: {elapsed / 60:.0f} min: {last.strip()[:120]}")
            if elapsed > BUILD_TIMEOUT_S:
                raise TargetError(f"{self.transport.display}: building {requirement} took over {BUILD_TIMEOUT_S / 3600:.0f} h",
                                  f"see {build}/build.log on the board")
        if rc.strip() != "0":
            tail = self.transport.run(["tail", "-n", "15", f"{build}/build.log"], timeout=30, check=False).stdout
            raise TargetError(f"{self.transport.display}: pip wheel {requirement} failed on the board (exit {rc.strip()}): "
                              f"{tail.strip().splitlines()[-1] if tail.strip() else ''}",
                              "a compiler (build-essential), cmake and internet access are needed for the first build; "
                              f"the log is {build}/build.log")
        names = self.transport.run(["sh", "-c", 'cd "$1/wheels" && ls -1 *.whl', "sh", build], timeout=60).stdout.split()
        wheels.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.endswith(".whl") and "/" not in name and not name.startswith("."):  # a file name from the board: never a path
                self.transport.get(f"{build}/wheels/{name}", inside(wheels, name, "wheel from the board"), max_bytes=MAX_WHEEL_BYTES)
        self.log(f"  pulled {len(names)} wheels back into {wheels}")

    # --- the target ---

    def _make_venv(self, rt: Runtime) -> str:
        py = f"{self.venv}/bin/python"
        if inspect_python(self.transport, py) is not None:
            return py
        res = self.transport.run([rt.python, "-m", "venv", self.venv], timeout=300, check=False)
        if not res.ok:
            raise TargetError(f"{self.transport.display}: cannot create a venv with {rt.python}: {res.tail().splitlines()[-1] if res.tail() else ''}",
                              "install the venv module on the target (Debian: apt install python3-venv)")
        return py

    def _push_and_install(self, wheels: Path, venv_python: str, extras: str) -> None:
        remote = f"{self.root}/runtime/wheels"
        self.transport.run(["mkdir", "-p", remote], timeout=30)
        files = sorted(wheels.glob("*.whl"))
        sizes = self._remote_sizes(remote)
        sent = 0
        for f in files:
            if sizes.get(f.name) != f.stat().st_size:
                self.transport.put(f, f"{remote}/{f.name}")
                sent += f.stat().st_size
        self.log(f"  pushed {len(files)} wheels ({sent / 1e6:.1f} MB sent) to {remote}")
        res = self.transport.run([venv_python, "-m", "pip", "install", "--no-index", "--find-links", remote,
                                  "--disable-pip-version-check", "--no-warn-script-location", f"{DIST}{extras}=={self.version}"],
                                 timeout=1800, check=False)
        if res.ok and self.backend != "cpu":
            # the venv may hold the CPU build of the same version, which pip calls satisfied: this
            # kind's backend wheel replaces it
            res = self.transport.run([venv_python, "-m", "pip", "install", "--no-index", "--find-links", remote, "--force-reinstall",
                                      "--no-deps", "--disable-pip-version-check", f"{DIST}=={self.version}"], timeout=1800, check=False)
        if not res.ok:
            last = res.tail().splitlines()[-1] if res.tail() else ""
            raise TargetError(f"{self.transport.display}: pip install from the wheelhouse failed: {last}",
                              f"the wheelhouse {wheels} may lack a dependency; run once online to complete it")

    def _remote_sizes(self, remote: str) -> dict[str, int]:
        out = self.transport.run(["sh", "-c", 'cd "$1" && for f in *.whl; do [ -f "$f" ] && echo "$(wc -c < "$f") $f"; done; true',
                                  "sh", remote], timeout=60, check=False).stdout
        sizes: dict[str, int] = {}
        for line in out.splitlines():
            size, _, name = line.strip().partition(" ")
            if size.isdigit():
                sizes[name] = int(size)
        return sizes


# --- one build per kind ----------------------------------------------------------------------


def fill_once(wheels: Path, fill: Callable[[], str], filled: Callable[[], bool], log: Log, display: str) -> str:
    """Fill a wheelhouse folder once however many boards of its kind ask at the same time: a host
    lock per kind (flock: threads of one lab and separate processes alike), the first builds, the
    others wait and then install what it built. A failed build is reported by the board that ran
    it; the boards that waited for it fail naming it rather than building again."""
    wheels.parent.mkdir(parents=True, exist_ok=True)
    failed = wheels.parent / f"{wheels.name}.failed"
    with open(wheels.parent / f"{wheels.name}.lock", "w") as lock:
        waited_from = None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited_from = time.time()
            log(f"  {display}: waiting for another board's build of llama-cpp-python for {wheels.name}")
            fcntl.flock(lock, fcntl.LOCK_EX)
            log(f"  {display}: waited {time.time() - waited_from:.0f} s for the build of {wheels.name}")
        if filled():
            return "wheelhouse (built for another board of this kind meanwhile)"
        if waited_from is not None and failed.exists() and failed.stat().st_mtime >= waited_from - 1:
            raise TargetError(f"{display}: not built again: {failed.read_text().strip()}",
                              "fix what the first board's build reported, then run again")
        try:
            source = fill()
        except (TargetError, BadInputError) as exc:
            failed.write_text(f"the build of {wheels.name} failed on {display}: {exc}\n")
            raise
        failed.unlink(missing_ok=True)
        return source


# --- this machine's wheel ---------------------------------------------------------------------


def local_wheel(version: str, log: Log, build_dir: Path | None = None, backend: str = "cpu", env: dict[str, str] | None = None) -> Path:
    """This machine's llama-cpp-python wheel: pip's wheel cache (CPU builds only), else built here
    (minutes; a GPU backend's build is kept in its own folder, wheels-built-<backend>)."""
    found = find_cached_wheel(version) if backend == "cpu" else None
    if found is not None:
        log(f"  using this machine's llama-cpp-python {version} wheel from pip's cache ({found.name})")
        return found
    out = build_dir or cache_dir() / ("wheels-built" if backend == "cpu" else f"wheels-built-{backend}")
    out.mkdir(parents=True, exist_ok=True)
    built = sorted(out.glob(f"llama_cpp_python-{version}-*.whl"))
    if built:
        return built[-1]
    log(f"  building llama-cpp-python {version}{'' if backend == 'cpu' else ' with ' + backend} here "
        f"(no built wheel; ~6 min on 2 cores for the CPU, more for a GPU backend)")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--no-cache-dir", "-w", str(out),
                          f"{DIST}=={version}"], capture_output=True, text=True, env={**os.environ, **(env or {})})
    built = sorted(out.glob(f"llama_cpp_python-{version}-*.whl"))
    if res.returncode != 0 or not built:
        raise BadInputError(f"could not build llama-cpp-python {version} here: {(res.stderr or res.stdout).strip()[-300:]}",
                            "a compiler and cmake are needed (scripts/setup.sh installs them)")
    return built[-1]


def find_cached_wheel(version: str) -> Path | None:
    """A wheel pip built for this machine earlier (pip's cache keeps wheels it built from sdists)."""
    machine = os.uname().machine
    roots = [Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip")) / "wheels"]
    pattern = re.compile(rf"llama_cpp_python-{re.escape(version)}-\S+-linux_{re.escape(machine)}\.whl")
    hits = [p for r in roots if r.is_dir() for p in r.rglob("llama_cpp_python-*.whl") if pattern.fullmatch(p.name)]
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def pip_download(wheels: Path, requirement: str, log: Log) -> None:
    """The dependencies' wheels for this machine's kind, next to the llama-cpp-python wheel."""
    log(f"  downloading the dependencies of {requirement} into {wheels}")
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary", ":all:",
                              "--find-links", str(wheels), "--dest", tmp, requirement], capture_output=True, text=True)
        if res.returncode != 0:
            raise fetch_error(f"pip download {requirement} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}",
                              "check this machine's access to the package index, or fill the wheelhouse by hand", res.stderr + res.stdout)
        for f in Path(tmp).glob("*.whl"):
            if not (wheels / f.name).exists():
                shutil.move(str(f), wheels / f.name)
