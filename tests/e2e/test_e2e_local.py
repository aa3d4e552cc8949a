"""The whole pipeline on this machine: real SmolLM2 GGUF, real llama-cpp-python inference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from toolchain.models.gguf_reader import sha256_file

pytestmark = pytest.mark.e2e


def edgedeploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["edgedeploy", *args], env=env, capture_output=True, text=True, timeout=600)


def one_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """stdout must hold exactly one JSON document."""
    return json.loads(proc.stdout)


# A generous budget: these tests prove the pipeline, not speed (a shared CI machine is noisy;
# speed claims live in bench/). Budget misses are provoked with budgets no machine meets.
PASSING_BUDGET = "10s"


def ship(env: dict[str, str], deploy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return edgedeploy(env, "ship", "--target", "local", "--budget", PASSING_BUDGET, "--model", "smollm2-135m-instruct",
                      "--quant", "Q4_1", "--deploy-dir", str(deploy), "--json", *extra)


def test_ship_local_measures_on_the_device_and_reports(cli_env: dict[str, str], tmp_path: Path, smollm2_gguf: Path) -> None:
    deploy = tmp_path / "deploy"
    proc = ship(cli_env, deploy)
    assert proc.returncode == 0, proc.stderr
    doc = one_json(proc)
    tel, rel = doc["telemetry"], doc["release"]
    # measured by the runner on the device, and plausible
    assert tel["decode_tokens_per_s"] > 0 and tel["prefill_tokens_per_s"] > 0
    assert tel["peak_rss_bytes"] >= smollm2_gguf.stat().st_size / 2
    assert tel["model_sha256"] == rel["model_sha256"] == sha256_file(smollm2_gguf)
    assert tel["decode_ms_p50"] > 0 and tel["decode_ms_p90"] >= tel["decode_ms_p50"]
    assert tel["threads"] >= 1 and tel["ctx"] == doc["plan"]["selected"]["ctx"]
    assert tel["load_s"] > 0 and tel["ttft_s"] > 0 and tel["llama_cpp"]
    assert doc["verdict"]["passed"] and rel["activated"]
    # the JSON contract of the plan
    sel = doc["plan"]["selected"]
    for key in ("model", "quant", "params", "file_bytes", "ctx", "kv_type", "threads", "mode", "predicted"):
        assert key in sel
    assert set(doc["plan"]["basis"]) >= {"usable_memory_bytes", "bandwidth_bytes_per_s", "efficiency"}
    # the run directory and the active release on the target
    run_dir = Path(doc["run_dir"])
    for name in ("report.json", "report.md", "junit.xml", "telemetry.jsonl", "plan.json", "facts.json"):
        assert (run_dir / name).is_file(), name
    assert "PASSED" in (run_dir / "report.md").read_text()
    # validate re-checks the measured run: against its own budget it passes, against 0.5 ms it fails (exit 5)
    assert edgedeploy(cli_env, "validate", str(run_dir)).returncode == 0
    assert edgedeploy(cli_env, "validate", str(run_dir), "--budget", "0.5ms").returncode == 5
    # ... and an edited report is refused on one line naming the field (exit 2), never a traceback
    edited = tmp_path / "edited-run"
    shutil.copytree(run_dir, edited)
    bad = json.loads((edited / "report.json").read_text())
    bad["plan"]["selected"]["predicted"]["decode_tokens_per_s"] = "fast"
    (edited / "report.json").write_text(json.dumps(bad))
    res = edgedeploy(cli_env, "validate", str(edited))
    assert res.returncode == 2 and "selected.predicted.decode_tokens_per_s" in res.stderr and "Traceback" not in res.stderr
    (edited / "facts.json").write_text("[]")
    bad["plan"] = doc["plan"]
    (edited / "report.json").write_text(json.dumps(bad))
    res = edgedeploy(cli_env, "validate", str(edited))
    assert res.returncode == 2 and "facts.json" in res.stderr and "Traceback" not in res.stderr
    current = deploy / "current"
    assert os.readlink(current) == f"releases/{rel['id']}"
    manifest = json.loads((current / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {"model.gguf", "runner.py", "events.py", "settings.json", "run.sh"}
    assert manifest["prediction"]["decode_tokens_per_s"] == sel["predicted"]["decode_tokens_per_s"]
    assert (current / "model.gguf").resolve() == (deploy / "models" / f"{rel['model_sha256']}.gguf").resolve()

    # a second ship of the same model sends no model bytes
    again = one_json(ship(cli_env, deploy))
    assert again["release"]["model_already_present"] and again["release"]["model_bytes_sent"] == 0

    # a release that misses its budget on the device is not activated (exit 5); the previous stays
    # (the saved plan is shipped against a budget no 2-core machine meets: only the device can tell)
    previous = os.readlink(current)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(doc["plan"]))
    miss = ship(cli_env, deploy, "--plan", str(plan_file), "--budget", "0.5ms")
    assert miss.returncode == 5, miss.stderr
    doc = one_json(miss)
    failed = [c["name"] for c in doc["verdict"]["checks"] if not c["passed"] and c["severity"] == "error"]
    assert failed == ["decode budget"]
    assert not doc["release"]["activated"] and os.readlink(current) == previous
    assert (Path(doc["run_dir"]) / "report.md").read_text().count("FAIL") >= 1

    # rollback makes the release before the current one active again
    rb = edgedeploy(cli_env, "rollback", "local", "--deploy-dir", str(deploy), "--json")
    assert rb.returncode == 0, rb.stderr
    assert os.readlink(current) == f"releases/{rel['id']}" != previous


def test_nothing_fits_exits_4_with_the_nearest_miss(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = ship(cli_env, tmp_path / "deploy", "--budget", "0.01ms")
    assert proc.returncode == 4
    doc = one_json(proc)
    assert doc["plan"]["selected"] is None and "smollm2" in doc["error"]
    assert not (tmp_path / "deploy" / "current").exists()


def test_bad_model_file_is_rejected_before_shipping(cli_env: dict[str, str], tmp_path: Path, smollm2_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as f:
        cut.write_bytes(f.read(40_000_000))
    proc = edgedeploy(cli_env, "ship", "--target", "local", "--budget", "120ms", "--model", str(cut), "--deploy-dir", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert "cut.gguf" in proc.stderr and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d" / "models").exists() or not any((tmp_path / "d" / "models").iterdir())


def test_unwritable_deploy_dir(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = ship(cli_env, Path("/proc/edgedeploy-cannot-exist"))
    assert proc.returncode == 2
    assert "not writable" in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr


def test_hostile_deploy_path_reaches_the_target_unchanged(cli_env: dict[str, str], tmp_path: Path) -> None:
    """Paths with spaces, quotes, $() and backticks are data, never shell code."""
    canary = tmp_path / "pwned"
    deploy = tmp_path / f"it's a \"deploy\" dir $(touch {canary}) `touch {canary}`; touch {canary}"
    proc = ship(cli_env, deploy)
    assert proc.returncode == 0, proc.stderr
    assert not canary.exists()
    doc = one_json(proc)
    assert Path(doc["release"]["path"]).parent.parent == deploy
    assert (deploy / "current" / "runner.py").is_file()
