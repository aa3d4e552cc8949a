"""Numbers and documents from outside, tried through the real CLI: impossible values are usage
errors (exit 2, one line, a hint), never a traceback or a plan built on a division by zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.core.errors import TargetError
from toolchain.deploy.telemetry import telemetry_from_events


def edgedeploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr and "hint:" in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("args", [
    ["--ram", "8GB", "--bandwidth", "0GB/s"],
    ["--ram", "0GB", "--bandwidth", "10GB/s"],
    ["--board", "rpi5-8gb", "--efficiency", "0"],
    ["--board", "rpi5-8gb", "--efficiency", "-1"],
    ["--board", "rpi5-8gb", "--efficiency", "nan"],
    ["--board", "rpi5-8gb", "--efficiency", "inf"],
    ["--board", "rpi5-8gb", "--bandwidth-share", "0"],
    ["--board", "rpi5-8gb", "--ttft", "0s"],
    ["--board", "rpi5-8gb", "--budget", "0ms"],
    ["--board", "rpi5-8gb", "--threads", "0"],
])
def test_impossible_numbers_are_usage_errors(cli_env: dict[str, str], args: list[str]) -> None:
    one_line_error(edgedeploy(cli_env, "plan", *args))


def test_markup_in_a_name_is_text(cli_env: dict[str, str]) -> None:
    err = one_line_error(edgedeploy(cli_env, "plan", "--board", "rpi[/x]9"))
    assert "rpi[/x]9" in err


def test_lab_file_with_nan_timeout(cli_env: dict[str, str], tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("name: x\ntimeouts: {board: .nan}\nboards:\n  a: local\n")
    assert "timeouts.board" in one_line_error(edgedeploy(cli_env, "lab", "run", str(lab)))


def test_report_dir_without_report_md(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    assert "report.md" in one_line_error(edgedeploy(cli_env, "report", str(tmp_path)))


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite:////proc/edgedeploy-nope/h.sqlite"])
def test_unusable_history_url(cli_env: dict[str, str], url: str) -> None:
    one_line_error(edgedeploy(cli_env, "report", "--history", "--history-url", url))


def test_version(cli_env: dict[str, str]) -> None:
    proc = edgedeploy(cli_env, "--version")
    assert proc.returncode == 0 and proc.stdout.strip()


@pytest.mark.parametrize("field", [("decode_tokens_per_s", "fast"), ("peak_rss_bytes", float("nan")), ("llama_cpp", 3)])
def test_telemetry_with_the_wrong_types_is_the_boards_fault(field: tuple[str, object]) -> None:
    result = {"event": "result", "load_s": 1.0, "ttft_s": 0.1, "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 20.0,
              "decode_ms_p50": 50.0, "decode_ms_p90": 55.0, "peak_rss_bytes": 1 << 28, "llama_cpp": "0.3.36", "threads": 2,
              "ctx": 512, "model_sha256": "ab" * 32}
    result[field[0]] = field[1]
    with pytest.raises(TargetError, match=field[0]):
        telemetry_from_events([json.loads(json.dumps(result, allow_nan=True))])  # type: ignore[list-item]
