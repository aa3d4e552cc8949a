"""Where things live: the bundled resources next to the package, and the user's data dirs."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

# targets/, profiles/ and templates/ sit beside toolchain/ (installed editable or from the repo).
RESOURCE_ROOT = Path(os.environ.get("EDGEDEPLOY_RESOURCES", Path(__file__).resolve().parents[2]))


def templates_dir() -> Path:
    return RESOURCE_ROOT / "templates"


def targets_dir() -> Path:
    return RESOURCE_ROOT / "targets"


def profiles_dir() -> Path:
    return RESOURCE_ROOT / "profiles"


def data_dir() -> Path:
    """Per-user state: local deployments, run directories, history, calibration."""
    return Path(os.environ.get("EDGEDEPLOY_HOME", user_data_dir("edgedeploy")))


def cache_dir() -> Path:
    """Re-creatable downloads and derived models (GGUF files are never in the repo)."""
    return Path(os.environ.get("EDGEDEPLOY_CACHE", user_cache_dir("edgedeploy")))


def models_cache() -> Path:
    return cache_dir() / "models"


def runs_dir() -> Path:
    return Path(os.environ.get("EDGEDEPLOY_RUNS", data_dir() / "runs"))
