"""A Markdown summary of a lab run, fit for GITHUB_STEP_SUMMARY (and GitLab job logs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2

from toolchain.core.paths import templates_dir


def render_summary(doc: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=False,
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    return env.get_template("lab_summary.md.j2").render(d=doc)


def publish_step_summary(markdown: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when GitHub Actions provides one."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a") as f:
        f.write(markdown + "\n")
    return path
