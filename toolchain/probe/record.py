"""`probe --record DIR`: the raw output of every fact, scrubbed, written as parser fixtures.

DIR/<fact>/<case>.yaml has the layout of tests/fixtures/probe/ (command, source, output,
expected), so contributing a board is: review `expected`, copy the files into the fixtures.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import TypedDict

import yaml

from toolchain import __version__
from toolchain.core.serde import to_json_dict
from toolchain.probe.commands import ALL_FACTS
from toolchain.probe.parsers import PARSERS

# Hostnames that identify nobody (and that DT strings such as "raspberrypi,4-model-b" contain).
DEFAULT_HOSTNAMES = {"localhost", "raspberrypi", "orangepi5", "jetson", "ubuntu", "debian", "android", "armbian", "dietpi",
                     "pi", "rock-5b", "linaro-alip", "tegra-ubuntu", "(none)"}
_SENSITIVE_PROP = re.compile(
    r"serial|imei|meid|iccid|imsi|msisdn|phone|mac(addr|_addr|address)?$|wifimac|btaddr|bt\.addr|bluetooth.*addr|hostname|"
    r"device_name|android_id|uuid|\.cid$|account|email", re.IGNORECASE)
_SCRUB = [
    (re.compile(r"(?im)^(serial\s*:\s*).+$"), r"\1<scrubbed>"),  # /proc/cpuinfo
    (re.compile(r"(?i)\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b"), "<mac>"),
    (re.compile(r"(/home/|/Users/)[^/\s\"']+"), r"\1<user>"),
    (re.compile(r"(?im)^((?:product|board|chassis)_(?:serial|uuid)|serial_number):.*$"), r"\1:<scrubbed>"),  # DMI
]


def scrub(text: str, hostname: str | None = None) -> str:
    """Remove hostnames, serial numbers, MAC addresses and user names from a fact's output."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*\[)([^\]]+)(\]\s*:\s*\[).*(\].*)$", line, re.DOTALL)
        if m and _SENSITIVE_PROP.search(m.group(2)):
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}<scrubbed>{m.group(4)}"
        out.append(line)
    text = "".join(out)
    for pattern, repl in _SCRUB:
        text = pattern.sub(repl, text)
    if hostname and len(hostname) >= 3 and hostname.lower() not in DEFAULT_HOSTNAMES:
        text = re.sub(rf"(?<![\w.-]){re.escape(hostname)}(?![\w-])", "<hostname>", text)
    return text


def _block_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _block_str)


class Fixture(TypedDict):
    """One file of tests/fixtures/probe/<fact>/."""

    command: str
    source: str
    output: str
    expected: object  # free-form JSON: whatever the fact's parser returns, serialised


def dump_fixture(fixture: Fixture) -> str:
    return yaml.dump(fixture, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)


def fixture_for(fact: str, output: str, source: str) -> Fixture:
    """One fixture: the command that ran, where the output came from, the output, and today's parse."""
    command = next((f.command for f in ALL_FACTS if f.name == fact), "")
    parser = PARSERS.get(fact)
    return {"command": command, "source": source, "output": output,
            "expected": to_json_dict(parser(output)) if parser else None}


def write_recording(directory: Path, raw: dict[str, str], *, target: str, case: str | None = None) -> list[Path]:
    hostname = raw.get("hostname", "").strip() or None
    recorded = {f.name for f in ALL_FACTS if f.record}
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    case = case or _case_name(raw) or "board"
    source = (f"recorded by `edgedeploy probe --record` (edgedeploy {__version__}) on {when}, board: {case}; "
              "hostnames, serial numbers, MAC addresses and user names scrubbed")
    written: list[Path] = []
    for fact, output in sorted(raw.items()):
        if fact not in recorded:
            continue
        path = directory / fact / f"{case}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_fixture(fixture_for(fact, scrub(output, hostname), source)))
        written.append(path)
    summary = {"target": "<scrubbed>" if "@" in target or (hostname and hostname in target) else target, "case": case,
               "edgedeploy": __version__, "recorded": when, "facts": sorted(f for f in raw if f in recorded)}
    (directory / "recording.json").write_text(json.dumps(summary, indent=2) + "\n")
    return written


def _case_name(raw: dict[str, str]) -> str | None:
    """A file name for the board: its device-tree, DMI or Android model (else the CPU's), slugged."""
    from toolchain.probe.parsers.cpu import parse_cpuinfo
    from toolchain.probe.parsers.system import parse_dmi, parse_dt_model, parse_getprop

    cpu = parse_cpuinfo(raw.get("cpuinfo", ""))
    name = (parse_dt_model(raw.get("dt_model", "")) or parse_dmi(raw.get("dmi", "")).get("product_name")
            or parse_getprop(raw.get("getprop", "")).get("ro.product.model") or cpu["board_model"] or cpu["model_name"])
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")
    return slug[:60] or None
