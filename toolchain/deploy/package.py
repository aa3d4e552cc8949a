"""Plan + GGUF -> a bundle directory: the model, the rendered runner and launcher, a manifest.

The manifest lists every file with its sha256 and carries the prediction, so what runs on the
device can always be traced to what was planned.
"""

from __future__ import annotations

import json
import os
import pprint
import shlex
import time
from pathlib import Path

import jinja2

from toolchain import __version__
from toolchain.core.nouns import Bundle, BundleFile, Plan, Selected
from toolchain.core.paths import templates_dir
from toolchain.core.serde import to_json_dict
from toolchain.models.gguf_reader import sha256_file

MODEL_FILE = "model.gguf"
BENCH_PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short note to a colleague about tomorrow's meeting, which moved to 10am.",
    "List three things to check before deploying software to a Raspberry Pi in a lab.",
]
DECODE_TOKENS = 48
N_BATCH = 512


def environment(*, strict: bool = True) -> jinja2.Environment:
    """Runner templates are strict (a missing setting is a bug); reports tolerate absent keys."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined if strict else jinja2.ChainableUndefined,
        keep_trailing_newline=True, autoescape=False,
    )
    env.filters["shell_quote"] = shlex.quote
    return env


def runner_settings(sel: Selected) -> dict[str, object]:
    return {
        "model_file": MODEL_FILE, "threads": sel.threads, "ctx": sel.ctx, "kv_type": sel.kv_type,
        "flash_attn": sel.flash_attn, "use_mmap": sel.use_mmap, "n_batch": N_BATCH, "decode_tokens": DECODE_TOKENS,
        "model": sel.model, "quant": sel.quant,
    }


def release_id(sel: Selected, model_sha256: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{sel.model}-{sel.quant}-{model_sha256[:8]}".lower()


def package(plan: Plan, gguf: Path, out_dir: Path, *, python: str, model_sha256: str | None = None) -> Bundle:
    """Write the bundle into out_dir (created); the GGUF is hard-linked when possible."""
    sel = plan.selected
    assert sel is not None, "package() needs a plan with a selection"
    sha = model_sha256 or sha256_file(gguf)
    rid = release_id(sel, sha)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dst = out_dir / MODEL_FILE
    model_dst.unlink(missing_ok=True)
    try:
        os.link(gguf, model_dst)
    except OSError:  # another filesystem: a symlink keeps the bundle complete without a copy
        model_dst.symlink_to(gguf.resolve())
    env = environment()
    context = {
        "release_id": rid, "model": sel.model, "quant": sel.quant, "python": python,
        # Python literals (not JSON: true/false/null are not Python).
        "settings_py": pprint.pformat(runner_settings(sel), indent=4, sort_dicts=True),
        "prompts_py": pprint.pformat(BENCH_PROMPTS, indent=4),
    }
    (out_dir / "runner.py").write_text(env.get_template("runner.py.j2").render(context))
    launcher = out_dir / "run.sh"
    launcher.write_text(env.get_template("run.sh.j2").render(context))
    launcher.chmod(0o755)
    files = [BundleFile(MODEL_FILE, sha, gguf.stat().st_size)]
    for name in ("runner.py", "run.sh"):
        p = out_dir / name
        files.append(BundleFile(name, sha256_file(p), p.stat().st_size))
    manifest = {
        "release": rid, "edgedeploy": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": sel.model, "quant": sel.quant, "settings": runner_settings(sel),
        "files": [to_json_dict(f) for f in files], "prediction": to_json_dict(sel.predicted),
        "budget": to_json_dict(plan.budget), "basis": to_json_dict(plan.basis),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(root=str(out_dir), release_id=rid, model_file=MODEL_FILE, model_sha256=sha, files=files)
