"""The one JUnit XML writer: one <testsuite> per target (a ship, or each board of a lab), one
<testcase> per check.

Written to the Jenkins junit-10.xsd structure (tests/fixtures/junit/), which GitLab's test report
and GitHub's JUnit reporter actions read: <skipped>, <error> and <failure> come before
<system-out> inside a test case, and a suite's <properties> come before its test cases.
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ELEMENT = {"failed": "failure", "error": "error", "skipped": "skipped"}


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # passed | failed | error | skipped | warning
    message: str
    detail: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    classname: str
    cases: list[Case]
    duration_s: float = 0.0
    timestamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    properties: dict[str, str] = field(default_factory=dict)
    failure_type: str = "result"  # the type= of <failure>/<error>: the failure class
    system_out: str = ""


def write_junit(path: Path, suites: list[Suite], *, name: str = "edgedeploy", duration_s: float | None = None) -> None:
    total = {"tests": 0, "failures": 0, "errors": 0}
    root = ET.Element("testsuites", name=name)
    if duration_s is not None:
        root.set("time", f"{duration_s:.3f}")
    for s in suites:
        counts = {"tests": len(s.cases), "failures": _count(s, "failed"), "errors": _count(s, "error"), "skipped": _count(s, "skipped")}
        for k in total:
            total[k] += counts[k]
        attrib = {"name": s.name, **{k: str(v) for k, v in counts.items()}, "time": f"{s.duration_s:.3f}",
                  "timestamp": s.timestamp[:19], "hostname": socket.gethostname()}
        suite = ET.SubElement(root, "testsuite", attrib)
        if s.properties:
            props = ET.SubElement(suite, "properties")
            for key, value in s.properties.items():
                ET.SubElement(props, "property", name=key, value=value)
        for c in s.cases:
            case = ET.SubElement(suite, "testcase", classname=s.classname, name=c.name, time="0")
            text = c.message + (f"\n{c.detail}" if c.detail else "")
            if c.outcome == "skipped":
                ET.SubElement(case, "skipped", message=c.message)
            elif c.outcome in ELEMENT:
                ET.SubElement(case, ELEMENT[c.outcome], message=c.message, type=s.failure_type).text = text
            ET.SubElement(case, "system-out").text = text
        if s.system_out:
            ET.SubElement(suite, "system-out").text = s.system_out
    for k, v in total.items():  # junit-10.xsd has no 'skipped' on <testsuites>
        root.set(k, str(v))
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _count(s: Suite, outcome: str) -> int:
    return sum(1 for c in s.cases if c.outcome == outcome)
