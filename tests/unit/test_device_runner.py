"""The on-device code as plain modules: the runner's pure helpers, the event format both ends share,
the bundle that carries them (byte for byte), and the interpreter floor of the board (3.8).

No model and no llama_cpp here: tests/test_runner_local.py runs the real runner on SmolLM2.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.shipkit import smollm2_plan
from toolchain.core.nouns import Telemetry
from toolchain.deploy import package as pkg
from toolchain.deploy.telemetry import error_event, parse_events, result_event, start_events, telemetry_from_events
from toolchain.device import device_source, events, runner
from toolchain.device import dry_load as device_dry_load

DEVICE = Path(runner.__file__).parent
DEVICE_FILES = sorted(p.name for p in DEVICE.glob("*.py") if p.name != "__init__.py")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle around a stand-in model file (packaging only links and hashes it)."""
    base = tmp_path_factory.mktemp("bundle")
    gguf = base / "stand-in.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    out = base / "b"
    pkg.package(smollm2_plan(gguf), gguf, out, python="/opt/py 3/bin/python3")
    return out


# --- the bundle -------------------------------------------------------------------------------


def test_bundle_carries_the_device_files_byte_for_byte(bundle: Path, tmp_path: Path) -> None:
    for name in pkg.DEVICE_FILES:
        assert (bundle / name).read_bytes() == (DEVICE / name).read_bytes(), name
    assert not (bundle / "runner.py.j2").exists() and not list(bundle.glob("*.j2"))
    # Another release (other settings) ships the same runner: its sha256 in the manifest is stable.
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    other = pkg.package(smollm2_plan(gguf, ctx=2048, threads=4), gguf, tmp_path / "b2", python="python3")
    first = {f["path"]: f["sha256"] for f in json.loads((bundle / "manifest.json").read_text())["files"]}
    second = {f.path: f.sha256 for f in other.files}
    assert first["runner.py"] == second["runner.py"] == hashlib.sha256((DEVICE / "runner.py").read_bytes()).hexdigest()
    assert first["events.py"] == second["events.py"]
    assert first["settings.json"] != second["settings.json"]


def test_manifest_lists_every_file_with_its_sha256(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {"model.gguf", "runner.py", "events.py", "settings.json", "run.sh"}
    for name, f in listed.items():
        data = (bundle / name).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size_bytes"] == len(data), name
    assert manifest["settings"] == runner.read_settings(str(bundle / "settings.json")).start_settings()


def test_settings_json_is_what_the_runner_reads(bundle: Path) -> None:
    settings = runner.read_settings(str(bundle / "settings.json"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert settings.release_id == manifest["release"] and settings.prompts == pkg.BENCH_PROMPTS
    assert (settings.model_file, settings.threads, settings.ctx, settings.kv_type, settings.n_batch) == ("model.gguf", 2, 512, "f16", 512)
    assert settings.model == "smollm2-135m-instruct" and settings.quant == "Q4_1" and settings.use_mmap is True


def test_launcher_is_the_only_rendered_file(bundle: Path) -> None:
    text = (bundle / "run.sh").read_text()
    rid = json.loads((bundle / "manifest.json").read_text())["release"]
    assert f"release {rid}" in text and "PY=${EDGEDEPLOY_PYTHON:-'/opt/py 3/bin/python3'}" in text
    assert os.access(bundle / "run.sh", os.X_OK) and '"$HERE/runner.py"' in text


@pytest.mark.parametrize("safe_path", ["", "1"])
def test_bundled_runner_starts_as_a_script_beside_its_events(bundle: Path, safe_path: str) -> None:
    """`python runner.py` imports events.py from its own directory (also under PYTHONSAFEPATH), reads
    settings.json, and answers --help without importing llama_cpp."""
    env = {**os.environ, "PYTHONSAFEPATH": safe_path} if safe_path else {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    res = subprocess.run([sys.executable, str(bundle / "runner.py"), "bench", "--help"], capture_output=True, text=True, env=env,
                         cwd="/", timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--sustained-s" in res.stdout and "--tokens" in res.stdout
    top = subprocess.run([sys.executable, str(bundle / "runner.py"), "--help"], capture_output=True, text=True, cwd="/", timeout=60)
    rid = runner.read_settings(str(bundle / "settings.json")).release_id
    assert top.returncode == 0 and rid in top.stdout and "smollm2-135m-instruct Q4_1" in top.stdout


def test_runner_without_settings_fails_with_a_traceback(tmp_path: Path) -> None:
    for name in pkg.DEVICE_FILES:
        (tmp_path / name).write_bytes((DEVICE / name).read_bytes())
    res = subprocess.run([sys.executable, str(tmp_path / "runner.py"), "bench"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "settings.json" in res.stderr


# --- settings ---------------------------------------------------------------------------------


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_file": "model.gguf", "threads": 4, "ctx": 1024, "kv_type": "q8_0", "flash_attn": False,
                           "use_mmap": True, "n_batch": 512, "decode_tokens": 48, "model": "m", "quant": "Q4_0",
                           "release_id": "r1", "prompts": ["a", "b"]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_parse_settings_takes_a_complete_document_and_ignores_newer_keys() -> None:
    s = runner.parse_settings(_doc(future_key=1))
    assert s.threads == 4 and s.kv_type == "q8_0" and s.prompts == ["a", "b"]
    assert set(s.start_settings()) == set(_doc()) - {"prompts", "release_id"} | {"backend", "n_gpu_layers"}
    assert s.backend == "cpu" and s.n_gpu_layers == 0  # a bundle from before placement runs on the CPU


@pytest.mark.parametrize(("changes", "message"), [
    ({"threads": None}, "threads should be a int"),
    ({"threads": True}, "threads should be a int"),  # a JSON bool is not a count
    ({"flash_attn": 1}, "flash_attn should be a bool"),
    ({"kv_type": "q5_1"}, "kv_type 'q5_1' is not one of f16, q4_0, q8_0"),
    ({"prompts": []}, "prompts should be a non-empty list of strings"),
    ({"prompts": ["a", 2]}, "prompts should be a non-empty list of strings"),
    ({"backend": "rocm"}, "backend 'rocm' is not one of cpu, cuda, metal, vulkan, opencl"),
    ({"backend": "vulkan", "n_gpu_layers": -1}, "n_gpu_layers should be a count of layers"),
    ({"rpc_servers": ["10.0.0.2:5005;rm -rf /"], "lib_dir": "/x"}, "rpc_servers should be a list of host:port"),
    ({"rpc_servers": ["10.0.0.2"], "lib_dir": "/x"}, "rpc_servers should be a list of host:port"),
    ({"rpc_servers": ["10.0.0.2:5005"]}, "lib_dir should name the RPC build's folder"),
    ({"tensor_split": [1, -2]}, "tensor_split should be a list of slot counts"),
])
def test_parse_settings_names_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runner.parse_settings(_doc(**changes), "settings.json")


def test_parse_settings_of_a_split_keeps_its_rpc_devices() -> None:
    s = runner.parse_settings(_doc(rpc_servers=["10.0.0.2:50052", "127.0.0.1:40000"], tensor_split=[22, 9], n_gpu_layers=31,
                                   lib_dir="/root/runtime/rpc/k"))
    # a CPU split still offloads every slot to the RPC devices, in the plan's order
    assert s.n_gpu_layers == 31 and list(s.rpc_servers) == ["10.0.0.2:50052", "127.0.0.1:40000"] and list(s.tensor_split) == [22.0, 9.0]
    assert runner.parse_settings(_doc(n_gpu_layers=31)).n_gpu_layers == 0  # no servers: the CPU, as before


def test_parse_settings_wants_an_object() -> None:
    with pytest.raises(ValueError, match="expected a JSON object"):
        runner.parse_settings([1, 2])


# --- latency maths and readings ---------------------------------------------------------------


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    import numpy as np

    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.5]
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
        assert runner.percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
    assert runner.percentile([], 0.5) == 0.0 and runner.percentile([3.0], 0.99) == 3.0


def test_sustained_speed_is_the_last_quarter() -> None:
    ms = [10.0] * 12 + [20.0] * 4  # the hottest quarter decodes at 50 tok/s
    assert runner.sustained_tokens_per_s(ms) == pytest.approx(50.0)
    assert runner.sustained_tokens_per_s([25.0, 40.0]) == pytest.approx(25.0)  # fewer than 4: the last one


def test_proc_status_and_firmware_readings() -> None:
    status = "Name:\tpython3\nVmPeak:\t  300 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
    assert runner.status_bytes("VmHWM", status) == 2048 * 1024 and runner.status_bytes("VmSwap", status) is None
    assert runner.parse_throttled("throttled=0x50005\n") == 0x50005 and runner.parse_throttled("") is None
    assert runner.pmic_watts("VDD_CORE_A current(7)=2.0A\nVDD_CORE_V volt(15)=0.8V\nEXT5V_V volt(24)=5.1V\n") == pytest.approx(1.6)
    assert runner.hottest({"cpu": 51.5, "gpu": 48.0}) == 51.5 and runner.hottest({}) is None


def test_read_number_raises_for_a_sensor_that_went_away(tmp_path: Path) -> None:
    (tmp_path / "energy_uj").write_text("123456\n")
    assert runner.read_number(str(tmp_path / "energy_uj")) == 123456.0
    with pytest.raises(OSError, match="unreadable"):
        runner.read_number(str(tmp_path / "gone"))


def test_sampler_integrates_a_wrapping_counter() -> None:
    """RAPL's joule counter wraps at max_energy_range_uj; sampling adds across the wrap."""
    readings = iter([9.0, 9.5, 0.5, 1.0])
    src = runner.PowerSource("fake rapl", 0.001, counter=lambda: next(readings), wrap_j=10.0)
    sampler = runner.PowerSampler.__new__(runner.PowerSampler)
    sampler.source, sampler.samples, sampler.error = src, [], None
    sampler.stop = threading.Event()
    sampler._run(src)  # runs until the counter raises StopIteration: recorded as the sampling error
    assert [round(e, 6) for _, e in sampler.samples] == [0.0, 0.5, 1.5, 2.0]
    assert sampler.error is not None


def test_serve_command_line() -> None:
    s = runner.parse_settings(_doc(flash_attn=True))
    argv = runner.serve_argv(s, "0.0.0.0", 8081)
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    pairs = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert pairs["--model"] == os.path.join(runner.HERE, "model.gguf") and pairs["--model_alias"] == "m"
    assert pairs["--type_k"] == pairs["--type_v"] == "8" and pairs["--flash_attn"] == "True" and pairs["--use_mmap"] == "True"
    assert pairs["--logits_all"] == "False" and pairs["--host"] == "0.0.0.0" and pairs["--port"] == "8081"


# --- the event format, both ends --------------------------------------------------------------


def _result() -> dict[str, Any]:
    values: dict[str, Any] = {name: 1.5 for name in events.RESULT_FIELDS}
    values.update(llama_cpp="0.3.36", kv_type="f16", model_sha256="ab" * 32, threads=4, ctx=512, peak_rss_bytes=200 << 20,
                  prompt_tokens=30, decode_tokens=24, latencies_ms=[1.0, 2.0], rounds=1, boot_id="b", power_source=None,
                  power_error=None, throttled_before=None, throttled_after=None, throttled_during=None, backend="vulkan",
                  device="Vulkan0", gpu_layers_offloaded=31, gpu_layers_total=31, device_memory_bytes=100 << 20)
    return values


def test_result_fields_cover_telemetry() -> None:
    required = {f.name for f in dataclasses.fields(Telemetry) if f.name != "extra"}
    assert required <= set(events.RESULT_FIELDS)
    assert len(set(events.RESULT_FIELDS)) == len(events.RESULT_FIELDS) and "event" not in events.RESULT_FIELDS


def test_emitted_lines_read_back_on_the_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "telemetry.jsonl")
    events.emit(out, events.START, mode="bench", settings={"ctx": 512}, pid=42, boot_id="b")
    events.emit(out, events.MEMORY, peak_rss_bytes=64 << 20)
    events.emit(out, events.RESULT, **_result())
    events.emit(out, events.ERROR, kind="oom", message="MemoryError", peak_rss_bytes=300 << 20)
    text = Path(out).read_text()
    assert capsys.readouterr().out == text  # echoed on stdout as written
    doc = json.loads(events.line(events.ERROR, {"event": "spoofed", "time": 0, "kind": "x"}))
    assert doc["event"] == "error" and doc["time"] > 0  # the emitter's own keys win
    first = text.splitlines()[0]
    assert list(json.loads(first)) == sorted(json.loads(first)) and json.loads(first)["time"] > 0
    evs = parse_events(text + '{"event": "resu')  # a torn last line from a killed runner is skipped
    assert [e["event"] for e in evs] == ["start", "memory", "result", "error"]
    assert [e["pid"] for e in start_events(evs)] == [42]
    err = error_event(evs)
    assert err is not None and err["kind"] == "oom"
    res = result_event(evs)
    assert res is not None and res["decode_tokens"] == 24
    tel = telemetry_from_events(evs)
    assert tel is not None and tel.decode_tokens == 24 and tel.ctx == 512 and tel.extra["rounds"] == 1
    assert "event" not in tel.extra and "time" not in tel.extra and "sustained_decode_tokens_per_s" in tel.extra


# --- what the board's interpreter needs ---------------------------------------------------------

ALLOWED_IMPORTS = {"llama_cpp", "numpy", "events", "runner", "toolchain"}  # beside each other on the board; toolchain: only under TYPE_CHECKING or relative


@pytest.mark.parametrize("name", DEVICE_FILES)
def test_device_files_parse_as_python_3_8_and_import_only_the_stdlib(name: str) -> None:
    source = (DEVICE / name).read_text()
    tree = ast.parse(source, filename=name, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    foreign = {m for m in imported if m not in sys.stdlib_module_names and m != "__future__"} - ALLOWED_IMPORTS
    assert not foreign, f"{name} imports {foreign}: the board has the stdlib and llama_cpp only"


@pytest.mark.parametrize("name", DEVICE_FILES)
def test_inlined_sources_still_compile(name: str) -> None:
    """What travels as `python -c` (comment and blank lines stripped) is still valid Python."""
    compile(device_source(name), name, "exec")


def test_dry_load_helpers() -> None:
    assert device_dry_load.keep_line("llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers)")
    assert device_dry_load.keep_line("load: ERROR something") and not device_dry_load.keep_line("print_info: n_head = 9")
    assert device_dry_load.vm_hwm_bytes("/nonexistent/status") is None
    if Path("/proc/self/status").exists():
        assert (device_dry_load.vm_hwm_bytes() or 0) > 1 << 20
