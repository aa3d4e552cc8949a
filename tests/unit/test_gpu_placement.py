"""GPU offload from probe to telemetry, as pure code and recorded outputs: llama.cpp's device
registry -> facts, the plan's placement (unified, discrete, partial, refused), the runner's reading
of llama.cpp's load log, the provisioning build flags, validate's placement check, bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_probe_support import board_raw
from toolchain.core.errors import BadInputError
from toolchain.core.nouns import HostFacts, Placement, RuntimeDevice, Telemetry
from toolchain.deploy import provision
from toolchain.device import runner
from toolchain.plan.boards import load_boards, lookup_board
from toolchain.plan.placement import DeviceMemory, place, split_seconds
from toolchain.plan.request import build_plan_request, plan_for
from toolchain.probe.assemble import assemble_facts
from toolchain.verdict.validate import placement_check

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "llama_logs"
MiB, GiB = 1 << 20, 1 << 30


def x86_facts() -> HostFacts:
    """This machine's recorded runtime (a CPU-only llama-cpp-python); the case has no meminfo: 16 GiB."""
    f = assemble_facts(board_raw("x86-64-vm"), target="t", deploy_dir="/d", quick=False)
    mem = replace(f.memory, total_bytes=16 * GiB, available_bytes=15 * GiB, usable_bytes=14 * GiB)
    return replace(f, memory=mem, bandwidth=replace(f.bandwidth, read_bytes_per_s=20e9))


def with_gpu(facts: HostFacts, *devices: RuntimeDevice) -> HostFacts:
    rt = replace(facts.runtime, llama_cpp_devices=[facts.runtime.llama_cpp_devices[0], *devices],
                 llama_cpp_backends=["cpu", *(runner.backend_of(d.name) for d in devices)])
    return replace(facts, runtime=rt)


RTX = RuntimeDevice("CUDA0", "CUDA", "NVIDIA GeForce RTX 3060", "gpu", 4 * GiB, 12 * GiB)


# --- the probe: llama.cpp's registry ------------------------------------------------------------


def test_the_probe_reports_the_registry_of_this_machines_llama_cpp() -> None:
    f = x86_facts()  # recorded here: a CPU-only llama-cpp-python 0.3.36
    assert [(d.name, d.backend, d.type) for d in f.runtime.llama_cpp_devices] == [("CPU", "CPU", "cpu")]
    assert f.runtime.llama_cpp_devices[0].memory_total_bytes > GiB and f.runtime.llama_cpp_backends == ["cpu"]


def test_registry_entries_from_a_board_are_checked() -> None:
    from toolchain.probe.parsers.runtime import backend_names, llama_devices

    devs = llama_devices([{"name": "Vulkan0", "backend": "Vulkan", "type": "gpu", "memory_free_bytes": 5, "description": "x" * 999},
                          {"name": "", "backend": "CUDA"}, {"name": "MTL0", "backend": "MTL", "type": "bogus", "memory_free_bytes": -3},
                          {"name": "CPU", "backend": "CPU", "type": "cpu"}] + [{"name": "CUDA9", "backend": "CUDA"}] * 100)
    assert [d.name for d in devs[:3]] == ["Vulkan0", "MTL0", "CPU"] and len(devs) <= 64
    assert len(devs[0].description) == 200 and devs[1].type == "unknown" and devs[1].memory_free_bytes == 0
    assert backend_names(devs[:3]) == ["vulkan", "metal", "cpu"]


# --- the runner: what llama.cpp's load log says ran -----------------------------------------------


@pytest.mark.parametrize(("log", "backend", "device", "offloaded", "total", "device_mib"), [
    ("jetson-agx-orin-cuda.txt", "cuda", "CUDA0", 37, 37, 6507.27 + 576 + 304),  # CUDA_Host is pinned host RAM
    ("rtx-partial-cuda.txt", "cuda", "CUDA0", 20, 33, 2514.06 + 320 + 296),
    ("apple-m2-metal.txt", "metal", "Metal", 29, 29, 934.12 + 112 + 299.75),
    ("lavapipe-vulkan.txt", "vulkan", "Vulkan0", 31, 31, 92.10 + 5.62 + 49.12),  # recorded here: Vulkan_Host is host RAM
])
def test_the_load_log_tells_the_placement(log: str, backend: str, device: str, offloaded: int, total: int, device_mib: float) -> None:
    p = runner.placement_from_log((LOGS / log).read_text())
    assert (p["backend"], p["device"], p["gpu_layers_offloaded"], p["gpu_layers_total"]) == (backend, device, offloaded, total)
    assert p["device_memory_bytes"] == pytest.approx(device_mib * MiB, rel=1e-6)


def test_a_cpu_only_load_reports_the_cpu() -> None:
    text = ("load_tensors:   CPU_Mapped model buffer size =    92.10 MiB\n"  # recorded on this machine, llama-cpp-python 0.3.36
            "llama_kv_cache:        CPU KV buffer size =     5.62 MiB\nsched_reserve:        CPU compute buffer size =    49.13 MiB\n")
    assert runner.placement_from_log(text) == {"backend": "cpu", "device": "", "device_description": "", "gpu_layers_offloaded": 0,
                                              "gpu_layers_total": 0, "device_memory_bytes": 0}


def test_the_runner_is_given_the_placement() -> None:
    doc = {"model_file": "m.gguf", "threads": 4, "ctx": 512, "kv_type": "f16", "flash_attn": False, "use_mmap": True, "n_batch": 64,
           "decode_tokens": 8, "model": "m", "quant": "Q4_0", "release_id": "r", "prompts": ["a"], "backend": "vulkan", "n_gpu_layers": 31}
    s = runner.parse_settings(doc)
    assert (s.backend, s.n_gpu_layers) == ("vulkan", 31)
    argv = runner.serve_argv(s, "127.0.0.1", 8080)
    assert argv[argv.index("--n_gpu_layers") + 1] == "31"  # serve mode carries the same placement
    assert runner.parse_settings({**doc, "backend": "cpu"}).n_gpu_layers == 0  # a CPU plan never offloads


# --- the plan ---------------------------------------------------------------------------------------


def test_placement_unified_discrete_partial_and_none() -> None:
    w, kv, comp = 900 * MiB, 64 * MiB, 100 * MiB
    unified = place("cuda", 29, w, kv, comp, DeviceMemory(None, "CUDA0"))
    assert isinstance(unified, Placement) and unified.gpu_layers == 29 and unified.n_gpu_layers() == 30 and "unified" in unified.reason
    full = place("cuda", 29, w, kv, comp, DeviceMemory(4 * GiB, "CUDA0"))
    assert isinstance(full, Placement) and full.gpu_layers == 29 and full.device_memory_bytes <= 4 * GiB
    part = place("cuda", 29, w, kv, comp, DeviceMemory(600 * MiB, "CUDA0"))
    assert isinstance(part, Placement) and 0 < part.gpu_layers < 29 and part.n_gpu_layers() == part.gpu_layers
    assert part.device_memory_bytes <= 600 * MiB * 0.95 and "on the CPU" in part.reason
    assert "not one layer fits" in str(place("cuda", 29, w, kv, comp, DeviceMemory(50 * MiB, "CUDA0")))
    assert "more than its 29 layers" in str(place("cuda", 29, w, kv, comp, DeviceMemory(None), requested=40))
    assert place("opencl", 29, w, kv, comp, DeviceMemory(None), flash_attn=True).flash_attn is False  # type: ignore[union-attr]
    # a split pays both sides' fixed costs: slower than its layers' share of either side
    t = split_seconds(part, 0.010, 0.002, 0.040, 0.003)
    f = part.gpu_layers / 30
    assert t > f * 0.010 + (1 - f) * 0.040 and 0.010 < t < 0.040 + 0.002


def _plan(facts: HostFacts | None, **kw: object):  # type: ignore[no-untyped-def]
    req = build_plan_request(models=["qwen2.5-0.5b-instruct"], quants=["Q4_K_M"], offline=False, **kw)  # type: ignore[arg-type]
    return plan_for(facts, req, target_kind="ssh")


def test_a_discrete_gpu_plan_places_layers_by_its_free_memory() -> None:
    f = with_gpu(x86_facts(), RTX)
    sel = _plan(f, backend="cuda", device_class="discrete-gpu").selected
    assert sel is not None and sel.placement.backend == "cuda" and sel.placement.device == "CUDA0"
    assert sel.placement.gpu_layers == sel.placement.n_layer > 0 and sel.placement.device_budget_bytes == 4 * GiB
    cpu = _plan(f, device_class="discrete-gpu").selected
    assert cpu is not None and cpu.placement.backend == "cpu"
    small = _plan(f, backend="cuda", device_class="discrete-gpu", device_memory="250MB").selected
    assert small is not None and 0 < small.placement.gpu_layers < small.placement.n_layer
    # a partial offload: slower than all on the GPU, host RAM holds only what stayed
    assert small.predicted.decode_tokens_per_s < sel.predicted.decode_tokens_per_s
    assert small.predicted.peak_memory_bytes > sel.predicted.peak_memory_bytes
    assert any("layers on CUDA0" in n for n in small.notes)
    nothing = _plan(f, backend="cuda", device_class="discrete-gpu", device_memory="20MB")
    assert nothing.selected is None and "not one layer fits" in (nothing.nearest_miss or "")
    three = _plan(f, backend="cuda", device_class="discrete-gpu", gpu_layers=3).selected
    assert three is not None and three.placement.gpu_layers == 3


def test_unified_memory_offloads_everything() -> None:
    board = lookup_board(load_boards(), "jetson-orin-nano-8gb")
    req = build_plan_request(models=["qwen2.5-0.5b-instruct"], quants=["Q4_K_M"], offline=False, backend="cuda", board=board.id)
    sel = plan_for(None, req).selected
    assert sel is not None and sel.placement.gpu_layers == sel.placement.n_layer and sel.placement.device_budget_bytes is None


def test_a_backend_the_runtime_lacks_is_refused_naming_what_it_has() -> None:
    with pytest.raises(BadInputError, match=r"backend vulkan is not in t's llama-cpp-python \(its llama.cpp has: cpu\)") as e:
        _plan(x86_facts(), backend="vulkan")
    assert "-DGGML_VULKAN=on" in e.value.hint
    with pytest.raises(BadInputError, match=re.escape("--gpu-layers 99 is more than the 24 layers of qwen2.5-0.5b-instruct")):
        _plan(with_gpu(x86_facts(), RTX), backend="cuda", gpu_layers=99)
    with pytest.raises(BadInputError, match="--gpu-layers needs a GPU backend"):
        build_plan_request(gpu_layers=3)


def test_backend_auto_picks_the_fastest_backend_the_runtime_has() -> None:
    f = with_gpu(x86_facts(), RTX)
    p = _plan(f, backend="auto", device_class="discrete-gpu")
    assert p.selected is not None and p.basis.backend == "cuda" and any("--backend auto" in n for n in p.selected.notes)
    only_cpu = _plan(x86_facts(), backend="auto")
    assert only_cpu.selected is not None and only_cpu.basis.backend == "cpu"


# --- validate --------------------------------------------------------------------------------------


def _tel(**kw: object) -> Telemetry:
    base = dict(load_s=1.0, ttft_s=0.1, prefill_tokens_per_s=100.0, decode_tokens_per_s=30.0, decode_ms_p50=33.0, decode_ms_p90=35.0,
                peak_rss_bytes=GiB, llama_cpp="0.3.36", threads=4, ctx=512, model_sha256="ab")
    return Telemetry(**{**base, **kw})  # type: ignore[arg-type]


def test_a_placement_mismatch_fails_in_words() -> None:
    planned = Placement("cuda", 28, 28, "CUDA0", 900 * MiB)
    miss = placement_check(planned, _tel())
    assert not miss.passed and miss.severity == "error"
    assert miss.detail.startswith("planned 28 of 28 layers on CUDA (CUDA0), 0 offloaded: the runtime is CPU-only")
    ok = placement_check(planned, _tel(backend="cuda", device="CUDA0", gpu_layers_offloaded=29, gpu_layers_total=29))
    assert ok.passed, ok.detail
    assert placement_check(Placement(), _tel()).passed
    assert not placement_check(Placement(), _tel(backend="vulkan", gpu_layers_offloaded=5)).passed


# --- provisioning ----------------------------------------------------------------------------------


def _rt(machine: str = "x86_64", libc: str = "glibc2.36", backends: tuple[str, ...] = ("cpu",)) -> provision.Runtime:
    return provision.Runtime("py", "3.11.2", machine, libc, ("avx2",), True, True, "0.3.36", False, backends)


def test_each_board_kind_gets_its_backends_build_flags() -> None:
    assert provision.build_env("cpu", _rt()) == {}
    assert provision.build_env("vulkan", _rt(), "-DVulkan_INCLUDE_DIR=/x") == {"CMAKE_ARGS": "-DGGML_VULKAN=on -DVulkan_INCLUDE_DIR=/x"}
    jetson = provision.build_env("cuda", _rt("aarch64"))
    assert jetson == {"CUDACXX": "/usr/local/cuda/bin/nvcc", "CMAKE_ARGS": "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87"}
    assert provision.build_env("opencl", _rt("aarch64", "bionic"))["CMAKE_ARGS"] == "-DGGML_OPENCL=on -DGGML_OPENCL_USE_ADRENO_KERNELS=ON"
    assert provision.build_env("metal", _rt("arm64", "darwin"))["CMAKE_ARGS"] == "-DGGML_METAL=on"
    with pytest.raises(BadInputError):
        provision.build_env("rocm", _rt())
    # the wheelhouse keeps a backend's build apart from the CPU one of the same kind
    assert provision.wheels_for(_rt(), "t", "vulkan").name == provision.wheels_for(_rt(), "t").name + "-vulkan"
    assert not _rt().ready("0.3.36", server=False, backend="vulkan") and _rt(backends=("cpu", "vulkan")).ready("0.3.36", server=False,
                                                                                                               backend="vulkan")


def test_the_cli_refuses_bad_placement_in_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    import json

    from toolchain.core.serde import to_json_dict

    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(to_json_dict(x86_facts())))
    for args, msg in ((["--backend", "cuda"], "backend cuda is not in t's llama-cpp-python"),
                      (["--backend", "auto", "--gpu-layers", "-1"], "--gpu-layers -1 is not a layer count")):
        proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "plan", "--facts", str(facts), "--model", "qwen2.5-0.5b-instruct",
                               "--online", *args], env=cli_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert msg in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[0].startswith("error:") and "hint:" in proc.stderr



def test_the_dry_load_checks_the_accelerators_memory_too() -> None:
    from toolchain.core.nouns import Prediction
    from toolchain.deploy import dry_load

    log = (LOGS / "lavapipe-vulkan.txt").read_text().splitlines()  # recorded: the allocator's lines name each buffer's device
    dry = dry_load.parse('{"ok": true, "model_bytes": 96570000, "log": ' + __import__("json").dumps(log) + "}")
    assert dry_load.device_buffer_bytes(dry) == pytest.approx((92.10 + 5.62 + 49.12) * MiB, rel=1e-4)
    pred = Prediction(30.0, 33.0, 300.0, 300 * MiB, weights_bytes=96 * MiB, kv_bytes=6 * MiB, compute_bytes=50 * MiB)
    assert dry_load.report(pred, dry, 8 * GiB, device_budget_bytes=2 * GiB).fits is True
    tight = dry_load.report(pred, dry, 8 * GiB, device_budget_bytes=100 * MiB)
    assert tight.fits is False and tight.device_bytes > tight.device_budget_bytes  # type: ignore[operator]
    assert dry_load.report(pred, dry, 8 * GiB).fits is True  # unified memory: the host's RAM decides
