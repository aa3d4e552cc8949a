"""llama.cpp's RPC backend for a model split across boards: the build, and rpc-server on a node.

The installed llama-cpp-python wheel has no RPC backend, so a split uses one CMake build of the
llama.cpp that the same llama-cpp-python version vendors (its sdist's vendor/llama.cpp): the
ggml-rpc-server binary and the shared libllama/libggml* it links, with GGML_RPC on. The head's
runner loads that libllama through llama-cpp-python's LLAMA_CPP_LIB_PATH (same source, same C
API), so the Python bindings and the servers speak one RPC protocol version. The build is kept per
board kind (the wheelhouse's key, provision.Runtime.key) under <user cache>/rpc/<kind>/ and made
once, under the same kind of host lock as the wheelhouse.

Security: rpc-server has no authentication and runs whatever graph a client sends it. It is only
ever bound to one address, the one the head reaches the worker at (the head's own server to
127.0.0.1), never 0.0.0.0, and every server a ship starts is stopped, and checked gone, when the
run ends or fails (RpcServers.stop_all, called from a finally).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.core.errors import BadInputError, EdgeDeployError, TargetError
from toolchain.core.paths import cache_dir
from toolchain.deploy.provision import DIST, Log, Runtime, fill_once, host_runtime, toolchain_llama_version
from toolchain.probe.link import check_address
from toolchain.transports.base import Transport

SERVER = "ggml-rpc-server"
# What a node needs of the build, under the names the loader looks for: the sonames the binaries
# were linked against, and libllama.so, the name llama-cpp-python loads from LLAMA_CPP_LIB_PATH.
LIBS = ("libggml-base.so.0", "libggml-cpu.so.0", "libggml-rpc.so.0", "libggml.so.0")
FILES = (SERVER, *LIBS, "libllama.so")
CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
              "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
              "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_APP=OFF")
BUILD_TIMEOUT_S = 3600.0
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


# --- the build (on this machine, for this machine's kind) ---------------------------------------


def build_root(key: str) -> Path:
    return cache_dir() / "rpc" / key


def built(key: str) -> Path | None:
    """The folder holding FILES for `key`, or None when it was not built yet."""
    out = build_root(key) / "build" / "bin"
    return out if all((out / f).exists() for f in FILES) else None


def source_tree(version: str, log: Log) -> Path:
    """llama-cpp-python's sdist of `version`, unpacked: its vendor/llama.cpp is what the runner's
    wheel was built from. Downloaded once with pip (no wheel: the source)."""
    base = cache_dir() / "rpc-src"
    tree = base / f"llama_cpp_python-{version}"
    if (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return tree
    sdist = base / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        base.mkdir(parents=True, exist_ok=True)
        log(f"  downloading the {DIST} {version} source (its vendored llama.cpp builds rpc-server)")
        res = subprocess.run([shutil.which("pip") or "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(base),
                              f"{DIST}=={version}"], capture_output=True, text=True, timeout=600)
        if res.returncode != 0 or not sdist.is_file():
            raise BadInputError(f"could not download the {DIST} {version} source: {(res.stderr.strip().splitlines() or ['?'])[-1]}",
                                f"put llama_cpp_python-{version}.tar.gz into {base} (pip download --no-binary :all: {DIST}=={version})")
    with tarfile.open(sdist) as tar:
        tar.extractall(base, filter="data")
    return tree


def ensure_build(rt: Runtime, log: Log) -> Path:
    """The rpc-server build for the board kind `rt`, built here once when it is this machine's kind."""
    done = built(rt.key)
    if done is not None:
        return done
    if rt.key != host_runtime().key:
        raise BadInputError(f"no rpc-server build for boards of kind {rt.key}",
                            f"a split builds llama.cpp's RPC backend on this machine for its own kind only; build "
                            f"{SERVER} and the shared libllama/libggml* for that kind (cmake {' '.join(CMAKE_ARGS)}) into "
                            f"{build_root(rt.key) / 'build' / 'bin'}")
    root = build_root(rt.key)

    def build() -> str:
        tree = source_tree(toolchain_llama_version(), log)
        out = root / "build"
        log(f"  building llama.cpp's rpc-server and shared libraries for {rt.key} (once; a few minutes)")
        start = time.monotonic()
        for argv in (["cmake", "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(out), *(["-G", "Ninja"] if shutil.which("ninja") else []),
                      *CMAKE_ARGS],
                     ["cmake", "--build", str(out), "-j", "2", "--target", SERVER, "llama"]):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            (root / "build.log").open("a").write(res.stdout + res.stderr)
            if res.returncode != 0:
                raise TargetError(f"building rpc-server failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}",
                                  f"cmake and a C++ compiler are needed (scripts/setup.sh installs them); see {root / 'build.log'}")
        log(f"  built rpc-server in {time.monotonic() - start:.0f} s")
        return "built here"

    root.mkdir(parents=True, exist_ok=True)
    fill_once(root / "build", build, lambda: built(rt.key) is not None, log, "this machine")
    done = built(rt.key)
    assert done is not None, "the build just finished"
    return done


def push(transport: Transport, root: str, key: str, local: Path, log: Log) -> str:
    """The build's FILES into <root>/runtime/rpc/<key>/ on the node (files already there, by size, are kept)."""
    remote = f"{root}/runtime/rpc/{key}"
    transport.run(["mkdir", "-p", remote], timeout=30)
    have = transport.run(["sh", "-c", 'cd "$1" && for f in *; do [ -f "$f" ] && echo "$(wc -c < "$f") $f"; done; true', "sh", remote],
                         timeout=30, check=False).stdout
    sizes = {n: int(s) for s, _, n in (line.partition(" ") for line in have.splitlines()) if s.isdigit()}
    sent = 0
    for name in FILES:
        f = (local / name).resolve()
        if sizes.get(name) != f.stat().st_size:
            transport.put(f, f"{remote}/{name}")
            sent += f.stat().st_size
    transport.run(["chmod", "755", f"{remote}/{SERVER}"], timeout=30)
    if sent:
        log(f"  {transport.display}: rpc-server and its libraries pushed ({sent / 1e6:.1f} MB) to {remote}")
    return remote


# --- rpc-server on a node -----------------------------------------------------------------------

# Runs with the node's python: a free port on `address` (bound, read, released; rpc-server binds it
# next), and a reader of an interface's byte counters by its address.
_FREE_PORT = "import socket,sys\ns=socket.socket()\ns.bind((sys.argv[1],0))\nprint(s.getsockname()[1])\ns.close()\n"
_CONNECT = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2).close()\n print('open')\n"
            "except OSError:\n print('closed')\n")
_COUNTERS = r"""
import fcntl, socket, struct, sys
want = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for line in open("/proc/net/dev").read().splitlines()[2:]:
    name, _, rest = line.partition(":")
    name = name.strip()
    try:
        addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))[20:24])
    except OSError:
        continue
    if addr == want:
        f = rest.split()
        print(name, f[0], f[8])
        break
"""


@dataclass
class RpcServer:
    """One rpc-server a ship started: where, and its pid on the node."""

    node: str
    transport: Transport
    python: str
    host: str
    port: int
    pid: int
    log: str

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def peak_memory_bytes(self) -> int | None:
        """Its VmHWM: the peak resident memory of the process (tensors, compute buffer, runtime)."""
        out = self.transport.run(["sh", "-c", 'cat "/proc/$1/status" 2>/dev/null', "sh", str(self.pid)], timeout=30, check=False).stdout
        for line in out.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def cpu_s(self) -> float:
        """CPU seconds the server used so far (utime + stime)."""
        out = self.transport.run(["sh", "-c", 'cat "/proc/$1/stat" 2>/dev/null', "sh", str(self.pid)], timeout=30, check=False).stdout
        fields = out.rsplit(")", 1)[-1].split()
        hz = 100  # USER_HZ: 100 on every Linux ABI that boards run
        return sum(int(x) for x in fields[11:13]) / hz if len(fields) > 12 else 0.0

    def alive(self) -> bool:
        return self.transport.run(["kill", "-0", str(self.pid)], timeout=30, check=False).ok

    def port_open(self) -> bool:
        return self.transport.run([self.python, "-c", _CONNECT, self.host, str(self.port)], timeout=30, check=False).stdout.strip() == "open"

    def tail(self) -> str:
        return self.transport.run(["tail", "-n", "5", self.log], timeout=30, check=False).stdout.strip()


def start_server(node: str, transport: Transport, python: str, remote: str, host: str, threads: int, cache: str) -> RpcServer:
    """rpc-server bound to `host` only (the address the head reaches this node at), with its tensor
    cache under `cache` (-c: tensors over 10 MiB are kept by hash, so a second load does not send them
    again). Started detached; returns once it accepts connections."""
    host = check_address(host, node)
    if host in ("0.0.0.0", "::"):
        raise BadInputError(f"{node}: rpc-server would listen on every interface ({host})",
                            "rpc-server has no authentication: it is bound to the address the head uses, never to all")
    got = transport.run([python, "-c", _FREE_PORT, host], timeout=30, check=False)
    if not got.ok or not got.stdout.strip().isdigit():
        raise TargetError(f"{node}: cannot bind a port on {host}: {(got.tail().splitlines() or ['?'])[-1]}",
                          f"{host} must be an address of {node} (the one the head reaches it at)")
    port = int(got.stdout.strip())
    log = f"{remote}/rpc-server.{port}.log"
    script = ('mkdir -p "$2" && cd "$1" && LD_LIBRARY_PATH="$1" LLAMA_CACHE="$2" nohup "$1/' + SERVER + '" -H "$3" -p "$4" -t "$5" -c '
              '</dev/null >"$6" 2>&1 & echo $!')
    started = transport.run(["sh", "-c", script, "sh", remote, cache, host, str(port), str(max(1, threads)), log], timeout=30, check=False)
    pid_text = started.stdout.strip().splitlines()[-1] if started.stdout.strip() else ""
    if not pid_text.isdigit():
        raise TargetError(f"{node}: rpc-server did not start: {started.tail().strip() or 'no pid'}", f"see {log} on {node}")
    server = RpcServer(node, transport, python, host, port, int(pid_text), log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise TargetError(f"{node}: rpc-server exited at start: {server.tail() or 'no output'}", f"see {log} on {node}")
        if server.port_open():
            return server
        time.sleep(0.2)
    stop_server(server)
    raise TargetError(f"{node}: rpc-server did not listen on {server.endpoint} within {START_TIMEOUT_S:.0f} s", f"see {log} on {node}")


def stop_server(server: RpcServer) -> bool:
    """TERM, then KILL; True once the process is gone and its port closed."""
    server.transport.run(["kill", str(server.pid)], timeout=30, check=False)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if server.alive():
        server.transport.run(["kill", "-9", str(server.pid)], timeout=30, check=False)
        time.sleep(0.2)
    return not server.alive() and not server.port_open()


@dataclass
class RpcServers:
    """Every rpc-server one ship started; stop_all() in a finally tears them all down."""

    servers: list[RpcServer] = field(default_factory=list)

    def add(self, server: RpcServer) -> RpcServer:
        self.servers.append(server)
        return server

    def stop_all(self) -> list[str]:
        """Stops every server (each tried even when another fails); the ones left running, by name."""
        left = []
        for s in self.servers:
            try:
                gone = stop_server(s)
            except EdgeDeployError:  # a node that dropped off: the others are still stopped
                gone = False
            if not gone:
                left.append(f"{s.node} pid {s.pid} ({s.endpoint})")
        self.servers = []
        return left


def link_counters(transport: Transport, python: str, address: str) -> tuple[str, int, int] | None:
    """(interface, received bytes, sent bytes) of the node's interface holding `address`."""
    out = transport.run([python, "-c", _COUNTERS, address], timeout=30, check=False).stdout.split()
    if len(out) != 3 or not (out[1].isdigit() and out[2].isdigit()):
        return None
    return out[0], int(out[1]), int(out[2])
