"""Plan + GGUF -> a bundle directory: the model, the runner, its settings, the launcher, a manifest.

runner.py and events.py are toolchain/device's files copied as they are (the same bytes, so the
same sha256, in every bundle); what differs per release is data in settings.json, and the
launcher run.sh rendered from templates/run.sh.j2. The manifest lists every file with its sha256
and carries the prediction, so what runs on the device can always be traced to what was planned.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shlex
import time
from importlib.resources import files
from pathlib import Path

import jinja2

from toolchain import __version__
from toolchain.core.errors import BadInputError
from toolchain.core.identifiers import check_release_id, shown, slug
from toolchain.core.nouns import Bundle, BundleFile, Plan, Selected
from toolchain.core.paths import templates_dir
from toolchain.core.serde import to_json_dict
from toolchain.core.units import fmt_bytes
from toolchain.models.gguf_reader import sha256_file

MODEL_FILE = "model.gguf"
SETTINGS_FILE = "settings.json"  # read by the runner (toolchain/device/runner.py: read_settings)
DEVICE_FILES = ("runner.py", "events.py")  # copied from toolchain/device; the runner imports events from its directory
LAUNCHER = "run.sh"
# Every file install_release puts in a release directory besides the model link and the manifest.
SHIPPED_FILES = (*DEVICE_FILES, SETTINGS_FILE, LAUNCHER)
BENCH_PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short note to a colleague about tomorrow's meeting, which moved to 10am.",
    "List three things to check before deploying software to a Raspberry Pi in a lab.",
]
DECODE_TOKENS = 48
N_BATCH = 512


@functools.lru_cache(maxsize=2)
def environment(*, strict: bool = True) -> jinja2.Environment:
    """Runner templates are strict (a missing setting is a bug); reports tolerate absent keys.
    One per kind per process: jinja2 caches compiled templates per environment (a lab of 32 boards
    would otherwise compile run.sh.j2 and report.md.j2 32 times)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined if strict else jinja2.ChainableUndefined,
        keep_trailing_newline=True, autoescape=False,
    )
    env.filters["shell_quote"] = shlex.quote
    env.filters["shell_comment"] = shell_comment
    env.filters["bytes"] = fmt_bytes
    return env


def shell_comment(value: object) -> str:
    """A value for a `#` comment line of a shell script: one line (control characters become '?')."""
    return "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in str(value))


def runner_settings(sel: Selected) -> dict[str, object]:
    """The runner's settings as the manifest (and the runner's start event) report them."""
    return {
        "model_file": MODEL_FILE, "threads": sel.threads, "ctx": sel.ctx, "kv_type": sel.kv_type,
        "flash_attn": sel.flash_attn, "use_mmap": sel.use_mmap, "n_batch": N_BATCH, "decode_tokens": DECODE_TOKENS,
        "model": sel.model, "quant": sel.quant,
        "backend": sel.placement.backend, "n_gpu_layers": sel.placement.n_gpu_layers(),
    }


def settings_document(sel: Selected, rid: str, extra: dict[str, object] | None = None) -> dict[str, object]:
    """settings.json: the runner's settings plus what belongs to this release (its id, the prompts)
    and, for a split, its RPC devices (deploy/group.py)."""
    return {**runner_settings(sel), **(extra or {}), "release_id": rid, "prompts": list(BENCH_PROMPTS)}


def release_id(sel: Selected, model_sha256: str) -> str:
    """<time>-<model>-<quant>-<sha8>, lower case, from identifiers only: the model and quant as
    slugs (a catalog id is one already; a local GGUF's file name may not be), the sha as hex. The id
    names a directory on the target and appears in run.sh: it is checked before it is used."""
    sha8 = model_sha256[:8].lower()
    if not (len(sha8) == 8 and all(c in "0123456789abcdef" for c in sha8)):
        raise BadInputError(f"model sha256 {shown(model_sha256)} is not hexadecimal", "this is a bug: the sha256 comes from hashing the file")
    # milliseconds and 16 random bits: two ships of one model in one second get two ids (ids
    # still sort by time to the second)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}{secrets.token_hex(2)}"
    rid = stamp + f"-{slug(sel.model, 'model')}-{slug(sel.quant, 'quant')}-{sha8}".lower()
    return check_release_id(rid, "release id")


def package(plan: Plan, gguf: Path, out_dir: Path, *, python: str, model_sha256: str | None = None,
            extra_settings: dict[str, object] | None = None) -> Bundle:
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
    for name in DEVICE_FILES:
        (out_dir / name).write_bytes(files("toolchain.device").joinpath(name).read_bytes())
    (out_dir / SETTINGS_FILE).write_text(json.dumps(settings_document(sel, rid, extra_settings), indent=2, sort_keys=True) + "\n")
    launcher = out_dir / LAUNCHER
    launcher.write_text(environment().get_template("run.sh.j2").render(release_id=rid, python=python))
    launcher.chmod(0o755)
    listed = [BundleFile(MODEL_FILE, sha, gguf.stat().st_size)]
    for name in SHIPPED_FILES:
        p = out_dir / name
        listed.append(BundleFile(name, sha256_file(p), p.stat().st_size))
    manifest = {
        "release": rid, "edgedeploy": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": sel.model, "quant": sel.quant, "settings": {**runner_settings(sel), **(extra_settings or {})},
        "files": [to_json_dict(f) for f in listed], "prediction": to_json_dict(sel.predicted),
        "budget": to_json_dict(plan.budget), "basis": to_json_dict(plan.basis),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(root=str(out_dir), release_id=rid, model_file=MODEL_FILE, model_sha256=sha, files=listed)
