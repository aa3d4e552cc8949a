"""A Markdown summary of a lab run, fit for GITHUB_STEP_SUMMARY (and GitLab job logs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from toolchain.core.paths import templates_dir

if TYPE_CHECKING:  # the document's types only; fleet.document imports the whole runner
    from toolchain.fleet.document import LabDocument


def render_summary(doc: LabDocument) -> str:
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
