"""Every EDGEDEPLOY_* environment variable: one table (name, meaning, default, where it is read)
and the typed accessors that package code reads them through (`edgedeploy settings` prints it).

Some variables are not read by this process: the probe and the deploy step set them for code on
the device (read_by says where), the ssh transport sets one per remote command, and the test rigs
under tests/boards use two. They are listed so that the table names every variable there is;
tests/test_settings.py fails when a new EDGEDEPLOY_ name appears anywhere without a row here.

Accessors read the environment at call time (tests and `lab run` change it within a process), and
an empty value counts as unset, except for the passwords, which are taken as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME = "EDGEDEPLOY_HOME"
CACHE = "EDGEDEPLOY_CACHE"
RUNS = "EDGEDEPLOY_RUNS"
RESOURCES = "EDGEDEPLOY_RESOURCES"
HISTORY = "EDGEDEPLOY_HISTORY"
WHEELHOUSE = "EDGEDEPLOY_WHEELHOUSE"
SSH_PASSWORD = "EDGEDEPLOY_SSH_PASSWORD"
SSH_COPY = "EDGEDEPLOY_SSH_COPY"
RUN_ID = "EDGEDEPLOY_RUN_ID"
SERIAL_USER = "EDGEDEPLOY_SERIAL_USER"
SERIAL_PASSWORD = "EDGEDEPLOY_SERIAL_PASSWORD"
THREADS = "EDGEDEPLOY_THREADS"
CPUS = "EDGEDEPLOY_CPUS"
PYTHON = "EDGEDEPLOY_PYTHON"
BOARD = "EDGEDEPLOY_BOARD"
BOARD_BIN = "EDGEDEPLOY_BOARD_BIN"
CALIBRATE = "EDGEDEPLOY_CALIBRATE"
CMAKE_ARGS = "EDGEDEPLOY_CMAKE_ARGS"

SSH_COPY_DEFAULT = "auto"


@dataclass(frozen=True)
class Setting:
    name: str
    meaning: str
    default: str  # in words: several defaults are computed (platform directories, other settings)
    read_by: str  # "edgedeploy" when this process reads it through this module, else who does
    secret: bool = False  # never printed, only whether it is set


HOST = "edgedeploy"

SETTINGS: tuple[Setting, ...] = (
    Setting(HOME, "Per-user state: local deployments, run directories, lab history, calibration.",
            "the platform's user data directory (~/.local/share/edgedeploy on Linux)", HOST),
    Setting(CACHE, "Re-creatable downloads: fetched and requantized GGUF models, the wheelhouse.",
            "the platform's user cache directory (~/.cache/edgedeploy on Linux)", HOST),
    Setting(RUNS, "Where each run's directory (report.json, report.md, logs) is written.",
            f"${HOME}/runs", f"{HOST} (`lab run --out` sets it for its board runs)"),
    Setting(RESOURCES, "A directory with targets/, profiles/ and templates/ used instead of the bundled ones, "
            "e.g. to keep your own target files (copy the bundled directories there first).",
            "the copies inside the installed package (toolchain/_resources)", HOST),
    Setting(HISTORY, "Lab history database URL: sqlite:///PATH or postgresql://user@host/db (--history-url wins).",
            f"sqlite:///${HOME}/history.sqlite", HOST),
    Setting(WHEELHOUSE, "Prebuilt llama-cpp-python wheels for targets, one folder per kind of board.",
            f"${CACHE}/wheelhouse", HOST),
    Setting(CMAKE_ARGS, "Extra CMake arguments for a llama-cpp-python built for a GPU backend, after the backend's own switch "
            "(e.g. -DVulkan_INCLUDE_DIR=/opt/vulkan/include where the system's Vulkan headers are too old).",
            "unset: the backend's switch only", HOST),
    Setting(SSH_PASSWORD, "Password for ssh targets that no key or agent logs in to (never taken from argv).",
            "unset: keys and agent only", HOST, secret=True),
    Setting(SSH_COPY, "How ssh targets receive large files: auto (the system ssh client when it logs in, "
            "else the open connection), ssh, or channel.", SSH_COPY_DEFAULT, HOST),
    Setting(SERIAL_USER, "Login user for a serial console whose target file has no login_user.",
            "unset: no login", HOST),
    Setting(SERIAL_PASSWORD, "Login password for a serial console whose target file has no login_password_env.",
            "unset: no password", HOST, secret=True),
    Setting(CALIBRATE, "Whether ship calibrates a device it has no measurements of (1) or plans it on class defaults (0); "
            "`ship --calibrate/--no-calibrate` wins.", "1", HOST),
    Setting(RUN_ID, "Tags every remote command of an ssh target, so a timeout can kill all it started.",
            "a new id per command", "the target's shell; set by the ssh transport, never by the user"),
    Setting(THREADS, "Thread count for the on-device bandwidth measurement.",
            "set by the probe (the decode thread count)", "the device: toolchain/device/membw.py"),
    Setting(CPUS, "Comma-separated cores the on-device bandwidth measurement pins its readers to.",
            "set by the probe (the decode cores)", "the device: toolchain/device/membw.py"),
    Setting(PYTHON, "The interpreter the on-device launcher runs the runner with.",
            "the Python the release was packaged for", "the device: templates/run.sh.j2 and the systemd unit; set by run and serve"),
    Setting(BOARD, "Root directory of a simulated board in the test rigs.",
            "set by the rig", "tests/boards (_nsinit.py, sshd.py)"),
    Setting(BOARD_BIN, "The simulated board's tool directory, put first on PATH in its login shells.",
            "set by the rig", "tests/boards (profile.d/edgedeploy-board.sh)"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def _value(name: str) -> str | None:
    if name not in BY_NAME:
        raise KeyError(f"{name} is not in the settings table")  # add a row above first
    return os.environ.get(name) or None


def _path(name: str) -> Path | None:
    value = _value(name)
    return Path(value) if value is not None else None


def home() -> Path | None:
    return _path(HOME)


def cache() -> Path | None:
    return _path(CACHE)


def runs() -> Path | None:
    return _path(RUNS)


def resources() -> Path | None:
    return _path(RESOURCES)


def history_url() -> str | None:
    return _value(HISTORY)


def wheelhouse() -> Path | None:
    return _path(WHEELHOUSE)


def cmake_args() -> str:
    return _value(CMAKE_ARGS) or ""


def ssh_copy() -> str:
    """auto, ssh or channel; the ssh transport refuses anything else with a hint."""
    return _value(SSH_COPY) or SSH_COPY_DEFAULT


def ssh_password(var: str = SSH_PASSWORD) -> str | None:
    """The ssh password from `var` (the transport lets a caller name another variable)."""
    return os.environ.get(var) or None


def calibrate() -> bool:
    return (_value(CALIBRATE) or "1").strip().lower() not in ("0", "no", "false", "off")


def serial_user() -> str | None:
    return _value(SERIAL_USER)


def serial_password() -> str | None:
    return os.environ.get(SERIAL_PASSWORD)  # "" is a password: a console may ask and accept an empty line


def rows() -> list[dict[str, str | bool | None]]:
    """The table with each variable's current value, secrets masked (`edgedeploy settings`)."""
    out: list[dict[str, str | bool | None]] = []
    for s in SETTINGS:
        raw = os.environ.get(s.name)
        value = ("(set)" if raw is not None else None) if s.secret else raw
        out.append({"name": s.name, "meaning": s.meaning, "default": s.default, "read_by": s.read_by,
                    "secret": s.secret, "value": value})
    return out
