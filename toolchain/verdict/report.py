"""Write a run directory: report.json, report.md (jinja2), junit.xml."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from toolchain import __version__
from toolchain.core.paths import runs_dir
from toolchain.core.units import fmt_bytes
from toolchain.deploy.package import environment

REPORT_FILES = ("report.json", "report.md", "junit.xml")


def new_run_dir(target: str, base: Path | None = None) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in target)[:40]
    first = (base or runs_dir()) / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    first.parent.mkdir(parents=True, exist_ok=True)
    # mkdir is the claim: two runs (threads of a lab, or two CI jobs) naming the same second both
    # get a directory of their own instead of one failing.
    for n in range(1, 1000):
        path = first if n == 1 else first.with_name(f"{first.name}~{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{first}: 999 runs in one second")


def write_reports(run_dir: Path, report: dict[str, Any]) -> None:
    """report is the ship JSON document (plan, release, telemetry, verdict, ...)."""
    report = {**report, "run_dir": str(run_dir), "edgedeploy": __version__}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    env = environment(strict=False)
    env.filters["bytes"] = fmt_bytes
    (run_dir / "report.md").write_text(env.get_template("report.md.j2").render(r=report))
    write_junit(run_dir / "junit.xml", [report])


def write_junit(path: Path, reports: list[dict[str, Any]]) -> None:
    """One <testsuite> per target, one <testcase> per check (readable by GitLab and GitHub)."""
    suites = ET.Element("testsuites", name="edgedeploy")
    for r in reports:
        checks = (r.get("verdict") or {}).get("checks", [])
        target = str(r.get("target", "target"))
        suite = ET.SubElement(suites, "testsuite", name=target, tests=str(len(checks)),
                              failures=str(sum(1 for c in checks if not c["passed"] and c.get("severity", "error") == "error")),
                              errors="0", skipped="0", timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
        for c in checks:
            case = ET.SubElement(suite, "testcase", classname=f"edgedeploy.{target}", name=c["name"], time="0")
            msg = f"observed {c['observed']} vs limit {c['limit']}" + (f": {c['detail']}" if c.get("detail") else "")
            if not c["passed"] and c.get("severity", "error") == "error":
                ET.SubElement(case, "failure", message=msg, type="check").text = msg
            else:
                ET.SubElement(case, "system-out").text = msg
    ET.indent(suites)
    path.write_bytes(ET.tostring(suites, encoding="utf-8", xml_declaration=True))
