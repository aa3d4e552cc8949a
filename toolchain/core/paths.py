"""Where things live: the bundled resources inside the package, and the user's data dirs."""

from __future__ import annotations

import functools
import os
from importlib.resources import files
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

from toolchain.core import settings

RESOURCES_PACKAGE = "toolchain._resources"  # symlinks to the repository's top-level directories


def _resource(name: str) -> Path:
    root = settings.resources()
    if root is not None:
        return root / name
    # pip installs a wheel as real files and an editable install reads the checkout, so the
    # Traversable is a directory on disk: Path() of it works with glob and jinja's FileSystemLoader.
    # resolve(): in a checkout, messages then name targets/x.yaml, the file to edit, not the link.
    return Path(str(files(RESOURCES_PACKAGE) / name)).resolve()


def templates_dir() -> Path:
    return _resource("templates")


def targets_dir() -> Path:
    """Board database (boards/) and target files; user targets go in $EDGEDEPLOY_RESOURCES/targets."""
    return _resource("targets")


def profiles_dir() -> Path:
    return _resource("profiles")


def data_dir() -> Path:
    """Per-user state: local deployments, run directories, history, calibration."""
    return settings.home() or _platform_dir("data", os.environ.get("XDG_DATA_HOME"))


def cache_dir() -> Path:
    """Re-creatable downloads and derived models (GGUF files are never in the repo)."""
    return settings.cache() or _platform_dir("cache", os.environ.get("XDG_CACHE_HOME"))


@functools.lru_cache(maxsize=8)
def _platform_dir(kind: str, _xdg: str | None) -> Path:
    """platformdirs' answer, kept per XDG value: a plan asks for the cache hundreds of times."""
    return Path(user_data_dir("edgedeploy") if kind == "data" else user_cache_dir("edgedeploy"))


def models_cache() -> Path:
    return cache_dir() / "models"


def runs_dir() -> Path:
    return settings.runs() or data_dir() / "runs"
