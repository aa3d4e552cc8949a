"""Every probe parser against its recorded outputs (tests/fixtures/probe), and against garbage."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest

from tests.unit.test_probe_support import FIXTURES, check_fixture, fixture_files, load
from toolchain.core.serde import to_json_dict
from toolchain.probe.assemble import assemble_facts
from toolchain.probe.commands import ALL_FACTS, FACTS, MEASUREMENTS
from toolchain.probe.gather import MARK, build_script, split_output
from toolchain.probe.parsers import PARSERS


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parser_matches_recording(path: Path) -> None:
    check_fixture(path)


def test_every_parser_is_pinned_by_a_recording() -> None:
    have = {p.parent.name for p in fixture_files()}
    assert set(PARSERS) - have == set()
    assert have - set(PARSERS) == set(), "a fixture directory names no parser"


def test_every_fact_has_a_parser_and_a_unique_name() -> None:
    names = [f.name for f in ALL_FACTS]
    assert len(names) == len(set(names))
    assert set(names) - {"hostname"} == set(PARSERS)  # hostname only scrubs recordings
    assert all(f.quick for f in FACTS) and not any(f.quick for f in MEASUREMENTS)


def test_reference_captures_keep_their_provenance() -> None:
    captured = [load(p) for p in fixture_files() if "device-captures/" in str(load(p)["source"])]
    assert len(captured) >= 15
    assert all("Source:" in str(fx["source"]) for fx in captured)


GARBAGE = [
    "", "\n", "\x00\x00\x00", "garbage", ":", "::::", "[", "[a]: [", "{", "{}", "[]", "null", "-1", "0", "9" * 40,
    "processor : x\nCPU part : zz", "cpu0/cpufreq/cpuinfo_max_freq:abc", "online:5-1", "online:0-99999999999",
    "cgroup / max", "cgroup2", "mountinfo: a b c - ", "sysfs: /sys/", "thermal_zone0/temp:-274000", "throttled=0xZZ",
    "RAM /MB SWAP x", "GPU0:\n\tdeviceName = ", "| 0 x On |\n|", "Filesystem\n/dev/x 1 2 3 4% /", "\ufffd" * 100,
    "a" * 200_000, "\r\n" * 50, "sh: 1: nvidia-smi: not found", "Permission denied", '{"python": 3}',
    "command not found\n\x1b[31mred\x1b[0m", "\t\t\t", "MemTotal: kB\nMemAvailable: -5 kB",
]


def _random_garbage(n: int, seed: int = 4) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.printable + "\x00\ufffd[]{}:=|@%/"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 600))) for _ in range(n)]


@pytest.mark.parametrize("fact", sorted(PARSERS))
def test_parser_survives_garbage(fact: str) -> None:
    parser = PARSERS[fact]
    for text in GARBAGE + _random_garbage(150):
        json.dumps(to_json_dict(parser(text)))  # no exception, and still JSON


def test_unknown_board_gives_reasons_not_guesses() -> None:
    for text in GARBAGE[:20] + _random_garbage(20, seed=9):
        raw = dict.fromkeys(PARSERS, text)
        for quick in (True, False):
            facts = assemble_facts(raw, target="mystery", deploy_dir="/x", quick=quick)
            json.dumps(to_json_dict(facts))
    facts = assemble_facts({}, target="mystery", deploy_dir="/x")
    assert facts.board.model is None and facts.memory.total_bytes == 0 and facts.runtime.python is None
    assert facts.os.kind == "unknown" and not facts.accelerators and facts.bandwidth.read_bytes_per_s is None
    reasons = {u.fact for u in facts.unknown}
    assert {"board.model", "os.kind", "memory.total_bytes", "memory.available_bytes", "storage.free_bytes", "bandwidth",
            "runtime.python", "cpu.cores"} <= reasons


def test_split_output_and_script_round_trip() -> None:
    script = build_script(FACTS[:3], deploy_dir="/tmp/it's here", python="python3", env={"EDGEDEPLOY_THREADS": "4"})
    assert "DEPLOY_DIR='/tmp/it'\"'\"'s here'" in script and "export EDGEDEPLOY_THREADS=4" in script
    assert script.count(MARK) == 3 and script.rstrip().endswith("exit 0")
    text = f"noise before\n\n{MARK} uname\r\nLinux 6.1 aarch64\r\n64\n\n{MARK} hostname\n\n{MARK} meminfo\nMemTotal: 1 kB\n"
    assert split_output(text) == {"uname": "Linux 6.1 aarch64\n64", "hostname": "", "meminfo": "MemTotal: 1 kB"}


def test_fixtures_directory_is_documented() -> None:
    assert (FIXTURES / "README.md").is_file()
