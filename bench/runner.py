"""Decode speed of the edgedeploy runner against llama.cpp's own llama-bench, same model and threads.

    .venv/bin/python bench/runner.py [--rounds 5] [--tokens 128] [--threads N] [--model PATH]

llama-bench is built from the llama.cpp source vendored in the installed llama-cpp-python version
(its sdist from the package index, unpacked and built under <user cache>/llama-bench/<version>/,
never in the repository), so both sides run the same ggml. The runner (toolchain/device/runner.py)
is packaged exactly as `ship` packages it and runs through its launcher (run.sh bench).
Rounds alternate (and swap who goes first) so drifting machine load hits both; the ratio of the
medians, runner tok/s / llama-bench tok/s, is printed. Goal: >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.shipkit import bundle_for  # noqa: E402
from toolchain.core.paths import cache_dir  # noqa: E402

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def llama_bench(version: str) -> Path:
    """The llama-bench binary for `version`, downloading and building it the first time (minutes)."""
    base = cache_dir() / "llama-bench" / version
    binary = base / "build" / "bin" / "llama-bench"
    if binary.exists():
        return binary
    base.mkdir(parents=True, exist_ok=True)
    src = base / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not src.is_dir():
        sdist = base / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.exists():
            log(f"downloading the llama-cpp-python {version} sdist")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", str(base)], check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(sdist) as tar:
            tar.extractall(base, filter="data")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    log(f"building llama-bench from {src} (several minutes on 2 cores)")
    subprocess.run(["cmake", "-S", str(src), "-B", str(base / "build"), *gen, *CMAKE_FLAGS], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(base / "build"), "--target", "llama-bench", "-j", str(os.cpu_count() or 2)],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


def llama_bench_on_wheel_libs(binary: Path) -> Path | None:
    """The same llama-bench relinked against the installed wheel's libllama/libggml: it isolates the
    runner's Python loop from differences of build (shared vs static, compile flags)."""
    build = binary.parent.parent
    out = binary.with_name("llama-bench-wheel-libs")
    if out.exists():
        return out
    import llama_cpp

    libs = Path(llama_cpp.__file__).parent / "lib"
    objs = [build / "tools/llama-bench/CMakeFiles/llama-bench.dir/main.cpp.o", build / "tools/llama-bench/libllama-bench-impl.a",
            build / "common/libllama-common.a", build / "common/libllama-common-base.a", build / "vendor/cpp-httplib/libcpp-httplib.a"]
    if not all(p.exists() for p in objs) or not (libs / "libllama.so").exists():
        return None
    res = subprocess.run(["c++", "-O3", "-o", str(out), *map(str, objs), f"-L{libs}", "-lllama", "-lggml", "-lggml-cpu", "-lggml-base",
                          "-ldl", "-lm", "-lgomp", "-lpthread", f"-Wl,-rpath,{libs}"], capture_output=True, text=True)
    return out if res.returncode == 0 else None


def run_llama_bench(binary: Path, model: Path, threads: int, tokens: int) -> float:
    """tg<tokens>, 3 repetitions in one process (the runner decodes 3 prompts); the median repetition."""
    out = subprocess.run([str(binary), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(tokens), "-r", "3",
                          "-fa", "off", "-ctk", "f16", "-ctv", "f16", "-o", "json"], check=True, capture_output=True, text=True).stdout
    row = next(r for r in json.loads(out) if r["n_gen"] == tokens)
    return float(statistics.median(row["samples_ts"]))


def run_runner(bundle: Path, tokens: int, out: Path) -> float:
    """The bundled runner through its launcher, as ship runs it: tok/s of its median prompt (of 3, each
    decoding `tokens`), as llama-bench's figure is its median repetition."""
    out.unlink(missing_ok=True)
    subprocess.run(["sh", str(bundle / "run.sh"), "bench", "--out", str(out), "--tokens", str(tokens)], check=True,
                   env={**os.environ, "EDGEDEPLOY_PYTHON": sys.executable}, stdout=subprocess.DEVNULL)
    result = [json.loads(line) for line in out.read_text().splitlines() if '"result"' in line][-1]
    ms = result["latencies_ms"]
    per_prompt = [len(ms[i:i + tokens]) * 1000.0 / sum(ms[i:i + tokens]) for i in range(0, len(ms), tokens)]
    return float(statistics.median(per_prompt))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: SmolLM2-135M-Instruct Q4_1 from the cache)")
    args = ap.parse_args()
    version = metadata.version("llama-cpp-python")
    if args.model is None:
        from toolchain.models.catalog import load_catalog
        from toolchain.models.sources import obtain

        args.model = obtain(load_catalog()["smollm2-135m-instruct"], "Q4_1")
    binary = llama_bench(version)
    relinked = llama_bench_on_wheel_libs(binary)
    cols: dict[str, list[float]] = {"runner": [], "llama-bench": [], **({"llama-bench on wheel libs": []} if relinked else {})}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(bundle_for(args.model, Path(tmp) / "bundle", threads=args.threads, ctx=args.tokens + 64).root)
        print(f"llama-cpp-python {version}, {args.model.name}, {args.threads} threads, tg{args.tokens}, tok/s")
        print("round " + " ".join(f"{k:>26}" for k in cols))
        for i in range(args.rounds):
            names = list(cols)
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
                if name == "runner":
                    cols[name].append(run_runner(bundle, args.tokens, Path(tmp) / "t.jsonl"))
                else:
                    cols[name].append(run_llama_bench(binary if name == "llama-bench" else relinked, args.model,  # type: ignore[arg-type]
                                                      args.threads, args.tokens))
            print(f"{i + 1:>5} " + " ".join(f"{v[-1]:>26.2f}" for v in cols.values()), flush=True)
    med = {k: statistics.median(v) for k, v in cols.items()}
    print("median " + " ".join(f"{v:>26.2f}" for v in med.values())[1:])
    print("best   " + " ".join(f"{max(v):>26.2f}" for v in cols.values())[1:])  # other load only ever slows a round
    r, b = med["runner"], med["llama-bench"]
    paired = statistics.median(x / y for x, y in zip(cols["runner"], cols["llama-bench"], strict=True))
    print(f"ratio runner/llama-bench = {r / b:.3f} (ratio of medians; median of per-round ratios {paired:.3f}; "
          f"best of each {max(cols['runner']) / max(cols['llama-bench']):.3f}; goal >= 0.95)")
    if relinked:
        w = med["llama-bench on wheel libs"]
        print(f"ratio runner/llama-bench on the wheel's libraries = {r / w:.3f}; llama-bench wheel libs/own build = {w / b:.3f}")
    return 0 if r / b >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
