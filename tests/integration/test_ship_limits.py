"""Ship's limits, on this machine: a link that carries only small files (serial), a disk that
fills up in the middle of an upload (a real, small tmpfs), and `edgedeploy status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shipkit import bundle_for
from toolchain.core.errors import TargetError
from toolchain.deploy.releases import FREE_MARGIN_BYTES, Shipper
from toolchain.models.gguf_reader import sha256_file
from toolchain.transports.base import Capabilities
from toolchain.transports.local import LocalTransport


class SerialLike(LocalTransport):
    capabilities = Capabilities(file_transfer=True, max_file_bytes=4 << 20, separate_stderr=False, resumable_put=False)

    def __init__(self) -> None:
        super().__init__()
        self.display = "serial:/dev/ttyUSB0"


def test_a_model_too_big_for_the_serial_link_is_refused_clearly(smollm2_gguf: Path, tmp_path: Path) -> None:
    shipper = Shipper(SerialLike(), str(tmp_path / "deploy"))
    shipper.prepare()
    with pytest.raises(TargetError) as err:
        shipper.upload_model(smollm2_gguf, sha256_file(smollm2_gguf))
    assert "93.8 MiB" in err.value.message and "4.0 MiB" in err.value.message and "serial" in err.value.message
    assert "ssh or adb" in err.value.hint
    assert not any((tmp_path / "deploy" / "models").iterdir())  # nothing was sent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = 98362432 + FREE_MARGIN_BYTES + (24 << 20)  # passes the free-space check before sending, barely
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "edgedeploy-test", str(mnt)], capture_output=True).returncode:
        pytest.fail("cannot mount a tmpfs here (the test rigs need root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_disk_that_fills_mid_upload_leaves_the_previous_release_current(smollm2_gguf: Path, small_disk: Path) -> None:
    root = small_disk / "deploy"
    shipper = Shipper(LocalTransport(), str(root), python=sys.executable)
    shipper.prepare()
    current = root / "releases" / "previous"
    current.mkdir()
    shipper.activate("previous")
    filler = small_disk / "someone-else"

    def fill(done: int, total: int) -> None:
        if done >= total // 3 and not filler.exists():  # another program takes the space meanwhile
            with filler.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                except OSError:
                    pass

    with pytest.raises(TargetError) as err:
        shipper.upload_model(smollm2_gguf, sha256_file(smollm2_gguf), progress=fill)
    assert "disk filled up during the upload" in err.value.message and "previous release stays current" in err.value.message
    assert shipper.current() == "previous" and os.readlink(root / "current") == "releases/previous"
    filler.unlink()
    _, sent, _ = shipper.upload_model(smollm2_gguf, sha256_file(smollm2_gguf))  # space back: it resumes
    assert 0 < sent < smollm2_gguf.stat().st_size


def test_status_shows_current_model_and_previous_releases(cli_env: dict[str, str], smollm2_gguf: Path, tmp_path: Path) -> None:
    root = tmp_path / "deploy"
    shipper = Shipper(LocalTransport(), str(root), python=sys.executable)
    shipper.prepare()
    shipper.upload_model(smollm2_gguf, sha256_file(smollm2_gguf))
    ids = []
    for i in range(2):
        rel = shipper.install_release(bundle_for(smollm2_gguf, tmp_path / f"b{i}"))
        (root / "releases" / rel.id).rename(root / "releases" / f"{rel.id}{i}")
        shipper.activate(f"{rel.id}{i}")
        ids.append(f"{rel.id}{i}")
    proc = subprocess.run(["edgedeploy", "status", "local", "--deploy-dir", str(root), "--json"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["current"] == ids[1] and doc["previous"] == [ids[0]]
    assert (doc["model"], doc["quant"]) == ("smollm2-135m-instruct", "Q4_1") and doc["serve"] is None
    human = subprocess.run(["edgedeploy", "status", "local", "--deploy-dir", str(root)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert f"current   {ids[1]}" in human.stdout and "serving   no" in human.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["--mode", "daemon"], "use --mode bench or --mode serve"),
    (["--sustained", "2 minutes"], "use a duration such as"),
    (["--mode", "serve", "--serve-port", "70000"], "outside 1-65535"),
    (["--mode", "serve", "--serve-host", "$(reboot)"], "is not a host address"),
])
def test_ship_run_options_are_checked(cli_env: dict[str, str], tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run(["edgedeploy", "ship", "--target", "local", "--deploy-dir", str(tmp_path / "d"), *args], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()
