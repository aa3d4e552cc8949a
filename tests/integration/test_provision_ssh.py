"""Runner provisioning from the host's wheelhouse, over real SSH, to a board of this machine's kind.

The board's python is a fresh venv without llama_cpp. The first ship fills the wheelhouse from
this machine's own llama-cpp-python wheel (pip's cache) plus its dependencies, pushes it and
installs it into <deploy root>/runtime/venv; the runner then runs. A second board of the same
kind is provisioned --offline, from the wheelhouse alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.boards.sshd import SshBoard
from tests.e2e.test_ship_ssh import connect_to, ship_plan
from tests.shipkit import host_board_dir, ssh_spec
from toolchain.core.errors import BadInputError
from toolchain.deploy.provision import Provisioner, find_cached_wheel, host_runtime, inspect_python, toolchain_llama_version
from toolchain.transports.ssh import SshTransport

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A python of this machine's kind whose site-packages lack llama_cpp."""
    venv = tmp_path_factory.mktemp("board-python") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    return str(venv / "bin" / "python")


def test_wheelhouse_provisions_a_board_of_this_machines_kind(
    ssh_board_factory: Callable[..., SshBoard], bare_python: str, smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = toolchain_llama_version()
    if find_cached_wheel(version) is None:
        pytest.fail(f"no llama-cpp-python {version} wheel in pip's cache: run scripts/setup.sh (it builds and caches one)")
    wheelhouse = tmp_path / "wheelhouse"
    monkeypatch.setenv("EDGEDEPLOY_WHEELHOUSE", str(wheelhouse))
    board = ssh_board_factory(host_board_dir(tmp_path))
    monkeypatch.setattr("toolchain.transports.factory.connect", connect_to(board))
    t = SshTransport(ssh_spec(board), ssh_config_path=str(board.ssh_config_path))
    before = inspect_python(t, bare_python)
    assert before is not None and before.llama_cpp is None and before.key == host_runtime().key

    deploy = tmp_path / "deploy"
    res = ship_plan(board, tmp_path, smollm2_gguf, deploy, python=bare_python, ctx=256)
    assert res.exit_code == 0, (res.report.get("error"), res.report.get("hint"))
    kind = wheelhouse / before.key
    assert any(kind.glob(f"llama_cpp_python-{version}-*.whl")) and any(kind.glob("numpy-*.whl"))
    venv_python = f"{deploy}/runtime/venv/bin/python"
    assert res.report["telemetry"]["decode_tokens_per_s"] > 0
    assert inspect_python(t, venv_python).llama_cpp == version  # type: ignore[union-attr]
    assert inspect_python(t, bare_python).llama_cpp is None  # type: ignore[union-attr]  # the board's own python untouched

    # a second board of the same kind: from the wheelhouse only, nothing downloaded
    logs: list[str] = []
    other = Provisioner(t, str(tmp_path / "deploy2"), log=logs.append, offline=True).ensure(bare_python)
    assert other.action == "installed" and other.source == "wheelhouse"
    # and a kind the wheelhouse has never seen: --offline says so, clearly
    monkeypatch.setenv("EDGEDEPLOY_WHEELHOUSE", str(tmp_path / "empty"))
    with pytest.raises(BadInputError, match=r"no llama-cpp-python .* wheel for this kind of board"):
        Provisioner(t, str(tmp_path / "deploy3"), offline=True).ensure(bare_python)
    t.close()
