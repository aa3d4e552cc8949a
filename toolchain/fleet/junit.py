"""The lab's JUnit XML: one <testsuite> per board, one <testcase> per check.

Written to the Jenkins junit-10.xsd structure (tests/fixtures/junit/), which GitLab's test report
and GitHub's JUnit reporter actions read: <skipped>, <error> and <failure> come before
<system-out> inside a test case, and a suite's <properties> come before its test cases.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ELEMENT = {"failed": "failure", "error": "error", "skipped": "skipped"}


def write_lab_junit(path: Path, doc: dict[str, Any]) -> None:
    boards = doc["boards"]
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suites = ET.Element("testsuites", name=f"edgedeploy lab {doc['lab']['name']}", time=f"{doc['duration_s']:.3f}")
    for b in boards:
        checks = b["checks"]
        counts = {"tests": len(checks), "failures": _count(checks, "failed"), "errors": _count(checks, "error"), "skipped": _count(checks, "skipped")}
        for k, v in counts.items():
            total[k] += v
        attrib = {"name": b["name"], **{k: str(v) for k, v in counts.items()}, "time": f"{b['duration_s']:.3f}",
                  "timestamp": doc["started_at"][:19], "hostname": socket.gethostname()}
        suite = ET.SubElement(suites, "testsuite", attrib)
        props = ET.SubElement(suite, "properties")
        for key in ("target", "status", "failure_class", "retries", "fingerprint", "model", "quant", "gguf_sha256", "llama_cpp_version", "run_dir"):
            if b.get(key) is not None:
                ET.SubElement(props, "property", name=key, value=str(b[key]))
        ET.SubElement(props, "property", name="labels", value=",".join(b["labels"]))
        ET.SubElement(props, "property", name="edgedeploy_version", value=doc["edgedeploy_version"])
        for c in checks:
            case = ET.SubElement(suite, "testcase", classname=f"edgedeploy.lab.{b['name']}", name=c["name"], time="0")
            text = c["message"] + (f"\n{c['detail']}" if c["detail"] else "")
            if c["outcome"] == "skipped":
                ET.SubElement(case, "skipped", message=c["message"])
            elif c["outcome"] in ELEMENT:
                kind = b["failure_class"] or "result"
                ET.SubElement(case, ELEMENT[c["outcome"]], message=c["message"], type=kind).text = text
            ET.SubElement(case, "system-out").text = text
        ET.SubElement(suite, "system-out").text = f"{b['name']}: {b['status']}" + (f"\n{b['error']}" if b["error"] else "")
    for k in ("tests", "failures", "errors"):  # junit-10.xsd has no 'skipped' on <testsuites>
        suites.set(k, str(total[k]))
    ET.indent(suites)
    path.write_bytes(ET.tostring(suites, encoding="utf-8", xml_declaration=True))


def _count(checks: list[dict[str, Any]], outcome: str) -> int:
    return sum(1 for c in checks if c["outcome"] == outcome)
