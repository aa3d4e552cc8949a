"""The lab's HTML report: one self-contained file (styles and plots inline) for CI artifacts."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from toolchain.core.paths import templates_dir
from toolchain.fleet import plots

if TYPE_CHECKING:  # the document's types only; fleet.document imports the whole runner
    from toolchain.fleet.document import LabDocument


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def render_html(doc: LabDocument, series: list[plots.BoardSeries], trend: list[plots.TrendPoint], out_dir: Path) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=True,
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    figures = {
        "predicted_vs_measured": data_uri(plots.predicted_vs_measured(series)),
        "latency": data_uri(plots.latency_distributions(series)),
        "temperature": data_uri(plots.temperatures(series)),
        "trends": data_uri(plots.trends(trend)),
    }
    links = {b["name"]: _rel(b.get("run_dir"), out_dir) for b in doc["boards"]}
    return env.get_template("lab_report.html.j2").render(d=doc, fig=figures, links=links)


def _rel(run_dir: str | None, out_dir: Path) -> str | None:
    """A link to the board's report.md that survives moving the whole runs folder (CI artifacts)."""
    if not run_dir:
        return None
    return os.path.relpath(Path(run_dir) / "report.md", out_dir)
