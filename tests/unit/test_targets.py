from pathlib import Path

import pytest

from toolchain.core.errors import BadInputError
from toolchain.transports.targets import resolve_target


def test_target_forms(tmp_path: Path) -> None:
    (tmp_path / "pi5.yaml").write_text("transport: ssh\nhost: raspberrypi.local\nuser: pi\nboard: rpi5-8gb\n")
    assert resolve_target("pi5", tmp_path).host == "raspberrypi.local"
    assert resolve_target("local", tmp_path).kind == "local"
    s = resolve_target("pi@10.0.0.7:2222", tmp_path)
    assert (s.kind, s.user, s.host, s.port) == ("ssh", "pi", "10.0.0.7", 2222)
    assert resolve_target("raspberrypi.local", tmp_path).host == "raspberrypi.local"
    assert resolve_target("ssh:plainhost", tmp_path).host == "plainhost"
    assert resolve_target("adb", tmp_path).adb_serial is None
    assert resolve_target("adb:R58M123", tmp_path).adb_serial == "R58M123"
    s = resolve_target("serial:/dev/ttyUSB0@9600", tmp_path)
    assert (s.kind, s.device, s.baud) == ("serial", "/dev/ttyUSB0", 9600)
    assert resolve_target("serial:/dev/ttyACM0", tmp_path).baud == 115200


def test_unknown_target_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "pi5.yaml").write_text("transport: ssh\nhost: raspberrypi.local\n")
    with pytest.raises(BadInputError) as err:
        resolve_target("pi6", tmp_path, ssh_config=tmp_path / "none")
    assert "pi6" in err.value.message and "did you mean pi5" in err.value.message
    assert "pi5" in err.value.hint and "local" in err.value.hint


def test_bad_target_file_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("transport: carrier-pigeon\n")
    with pytest.raises(BadInputError) as err:
        resolve_target("bad", tmp_path)
    assert "bad.yaml" in err.value.message and "transport" in err.value.message
    (tmp_path / "bad2.yaml").write_text("transport: ssh\nport: twenty-two\n")
    with pytest.raises(BadInputError) as err:
        resolve_target("bad2", tmp_path)
    assert "bad2.yaml" in err.value.message and "'port'" in err.value.message
