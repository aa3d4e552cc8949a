"""CLI contract: one JSON document with --json, one-line errors with hints, documented exit codes."""

from __future__ import annotations

import json
import subprocess

import pytest


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["edgedeploy", *args], env=env, capture_output=True, text=True, timeout=300)


def test_probe_local_json_contract(cli_env: dict[str, str]) -> None:
    proc = run(cli_env, "probe", "local", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["target"] == "local" and doc["os"]["kind"] == "linux"
    assert doc["cpu"]["cores"] >= 1 and doc["cpu"]["arch"]
    assert 0 < doc["memory"]["usable_bytes"] < doc["memory"]["available_bytes"] <= doc["memory"]["total_bytes"]
    assert doc["storage"]["free_bytes"] > 0
    assert doc["bandwidth"]["read_bytes_per_s"] > 1e8
    assert doc["runtime"]["llama_cpp"] and doc["runtime"]["python"]
    assert "board" in doc and "accelerators" in doc


def test_plan_what_if_board_json(cli_env: dict[str, str]) -> None:
    proc = run(cli_env, "plan", "--board", "rpi5-8gb", "--budget", "120ms", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    sel = doc["selected"]
    assert sel["predicted"]["decode_ms_per_token"] <= 120
    assert sel["predicted"]["peak_memory_bytes"] <= doc["basis"]["usable_memory_bytes"]
    rejected = [c for c in doc["candidates"] if not c["fits"]]
    assert rejected and all(c["reasons"] for c in rejected)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ship", "--target", "local", "--budget", "120"], "no recognised unit"),
        (["ship", "--target", "nosuchboard", "--budget", "120ms"], "unknown target"),
        (["plan", "--board", "rpi9", "--json"], "unknown board"),
        (["plan", "--board", "rpi5-8gb", "--model", "lama-3-8b"], "unknown model"),
        (["plan", "--board", "rpi5-8gb", "--quant", "Q4_K_N"], "unknown quant"),
        (["plan", "--ram", "8", "--bandwidth", "17GB/s"], "no recognised unit"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli_env: dict[str, str], args: list[str], needle: str) -> None:
    proc = run(cli_env, *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr


def test_error_with_json_is_still_one_document(cli_env: dict[str, str]) -> None:
    proc = run(cli_env, "plan", "--board", "rpi9", "--json")
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and "rpi9" in doc["error"] and doc["hint"]


def test_nothing_fits_on_a_small_board_exits_4(cli_env: dict[str, str]) -> None:
    proc = run(cli_env, "plan", "--board", "rpi4-2gb", "--model", "llama-3-70b-instruct", "--json")
    assert proc.returncode == 4
    doc = json.loads(proc.stdout)
    assert doc["selected"] is None and "GiB usable" in " ".join(doc["candidates"][0]["reasons"])


def test_models_and_targets_list(cli_env: dict[str, str]) -> None:
    models = json.loads(run(cli_env, "models", "--json").stdout)
    assert len(models) >= 25 and any(m["id"] == "smollm2-135m-instruct" for m in models)
    targets = json.loads(run(cli_env, "targets", "--json").stdout)
    assert any(t["name"] == "local" for t in targets)
    boards = json.loads(run(cli_env, "targets", "--boards", "--json").stdout)
    assert {"rpi5-8gb", "jetson-orin-nano-8gb", "apple-m2-max"} <= {b["id"] for b in boards}
