"""The GPU path on this machine's CPU-only llama-cpp-python: a CPU ship reports the CPU placement
from llama.cpp's own load log, and a plan for a backend the runtime lacks never becomes a silent CPU
run. (The real Vulkan path, on lavapipe, is bench/gpu_offload.py: its build takes ~9 minutes.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _ship(env: dict[str, str], gguf: Path, deploy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolchain.cli", "ship", "--target", "local", "--model", str(gguf),
                           "--deploy-dir", str(deploy), "--json", *extra], env=env, capture_output=True, text=True, timeout=900)


def test_a_cpu_ship_reports_what_llama_cpp_ran_and_a_missing_backend_ships_nothing(
        cli_env: dict[str, str], tmp_path: Path, smollm2_gguf: Path) -> None:
    env = {**cli_env, "EDGEDEPLOY_WHEELHOUSE": str(tmp_path / "wheelhouse")}  # empty: no GPU build of llama-cpp-python here
    deploy = tmp_path / "deploy"
    ok = _ship(env, smollm2_gguf, deploy)
    assert ok.returncode == 0, ok.stderr[-3000:]
    doc = json.loads(ok.stdout)
    tel = doc["telemetry"]
    assert (tel["backend"], tel["device"], tel["gpu_layers_offloaded"], tel["device_memory_bytes"]) == ("cpu", "", 0, 0)
    check = next(c for c in doc["verdict"]["checks"] if c["name"] == "placement")
    assert check["passed"] and check["detail"] == "planned on the CPU"
    assert doc["plan"]["selected"]["placement"]["backend"] == "cpu"
    current = (deploy / "current").resolve()

    refused = _ship(env, smollm2_gguf, deploy, "--backend", "vulkan", "--offline")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    text = " ".join(refused.stderr.split())  # the console wraps long lines
    error = text[text.index("error:"):text.index("hint:")]
    assert error.startswith("error: no llama-cpp-python 0.3.36 wheel") and "-vulkan" in error
    assert error.rstrip().endswith("(--offline: not downloading dependencies)") and "hint:" in text
    assert (deploy / "current").resolve() == current  # nothing shipped, the previous release stays current
