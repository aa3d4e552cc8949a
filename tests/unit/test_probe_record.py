"""`probe --record`: scrubbing, and recordings that convert into fixtures as they are."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_probe_support import board_raw, check_fixture, fixture_files, load, output
from toolchain.probe.record import scrub, write_recording


def test_scrubs_serial_numbers() -> None:
    cpuinfo = output("cpuinfo", "rpi4-rev1.4-32bit-kernel")
    assert "10000000d778dec3" in cpuinfo
    clean = scrub(cpuinfo)
    assert "10000000d778dec3" not in clean and "Serial          : <scrubbed>" in clean
    assert "Model           : Raspberry Pi 4 Model B Rev 1.4" in clean and "CPU part        : 0xd08" in clean


def test_scrubs_android_identifiers() -> None:
    props = output("getprop", "pixel-6-pro-excerpt") + (
        "\n[ro.boot.serialno]: [1A011FDEE006UW]\n[persist.vendor.radio.imei]: [356938035643809]\n[net.hostname]: [Pixel-6-Pro]"
        "\n[ro.boot.wifimacaddr]: [a4:77:33:12:34:56]\n[ro.boot.btmacaddr]: [A4:77:33:12:34:57]")
    clean = scrub(props)
    for secret in ("1A011FDEE006UW", "356938035643809", "Pixel-6-Pro", "a4:77:33:12:34:56", "A4:77:33:12:34:57"):
        assert secret not in clean, secret
    assert "[ro.serialno]: [<scrubbed>]" in clean and "[ro.soc.model]: [Tensor]" in clean
    assert "[ro.product.vendor.model]: [Pixel 6 Pro]" in clean  # the model is what a fixture is for


def test_scrubs_hostnames_and_users_but_not_board_names() -> None:
    text = ("mountinfo: 0:52 / /home/alice/edgedeploy rw - nfs4 fileserver-07:/export/homes rw\n"
            '{"python_path": "/home/alice/venv/bin/python3"}\nfileserver-07.lan fileserver-07x\n')
    clean = scrub(text, hostname="fileserver-07")
    assert "alice" not in clean and "/home/<user>/edgedeploy" in clean and "<hostname>:/export" in clean
    assert "<hostname>.lan" in clean and "fileserver-07x" in clean  # whole names only
    # Default hostnames identify nobody and appear in device-tree strings: left alone.
    compat = "raspberrypi,4-model-b\nbrcm,bcm2711"
    assert scrub(compat, hostname="raspberrypi") == compat
    assert scrub("ether 02:42:ac:11:00:02") == "ether <mac>"


def test_recording_converts_into_fixtures(tmp_path: Path) -> None:
    raw = board_raw("rpi4-32bit") | {"hostname": "sl01-garage"}
    raw["os_release"] += "\n# sl01-garage"
    written = write_recording(tmp_path, raw, target="pi@sl01-garage.local")
    assert written and all(p.suffix == ".yaml" for p in written)
    assert not (tmp_path / "hostname").exists()  # gathered only to scrub, never recorded
    summary = json.loads((tmp_path / "recording.json").read_text())
    assert summary["target"] == "<scrubbed>" and summary["case"] == "raspberry-pi-4-model-b-rev-1-4"
    for path in fixture_files(tmp_path):
        check_fixture(path)  # each file already is a valid fixture: same command, parse == expected
        fx = load(path)
        assert "sl01-garage" not in path.read_text() and "edgedeploy probe --record" in fx["source"]
    assert "<hostname>" in load(tmp_path / "os_release" / "raspberry-pi-4-model-b-rev-1-4.yaml")["output"]
    assert "<scrubbed>" in load(tmp_path / "cpuinfo" / "raspberry-pi-4-model-b-rev-1-4.yaml")["output"]
