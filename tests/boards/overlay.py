"""Run a command "on" an emulated board: private namespaces with the board's overlay laid on top.

The overlay itself is applied by _nsinit.py inside the new namespaces; see its docstring for the
rules. Needs root (mount namespaces, bind mounts).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

BOARDS_DIR = Path(__file__).resolve().parent
_NSINIT = BOARDS_DIR / "_nsinit.py"


def board_path(board: str | Path) -> Path:
    """A board name ("rpi4-4gb") or a path to a board folder -> the folder's absolute path."""
    path = Path(board)
    if not path.is_dir() and (BOARDS_DIR / str(board)).is_dir():
        path = BOARDS_DIR / str(board)
    if not (path / "board.yaml").is_file():
        raise FileNotFoundError(f"not a board folder (no board.yaml): {board}")
    return path.resolve()


def needs_pid_namespace(board_dir: Path) -> bool:
    """True when the board adds entries to /proc, which only a private procfs can carry."""
    proc = board_dir / "root" / "proc"
    if not proc.is_dir():
        return False
    for dirpath, dirnames, filenames in os.walk(proc):
        for name in filenames + dirnames:
            target = "/" + os.path.relpath(os.path.join(dirpath, name), board_dir / "root")
            if not os.path.lexists(target):
                return True
    return False


def namespace_argv(board_dir: Path, argv: list[str], *, pid_namespace: bool | None = None) -> list[str]:
    """argv that runs `argv` with the board's files over the real paths and its bin/ first on PATH.

    New mount and UTS namespaces (hostname = the board's). A new PID namespace too when
    `pid_namespace` is True, or when None (the default) and the board adds /proc entries; then the
    command is PID 1 there and everything it leaves behind dies with it.
    """
    board_dir = board_path(board_dir)
    needed = needs_pid_namespace(board_dir)
    if pid_namespace is False and needed:
        raise ValueError(f"{board_dir.name} adds /proc entries, which need a PID namespace")
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    cmd = [unshare, "--mount", "--uts", "--propagation", "private"]
    if pid_namespace or needed:
        cmd += ["--pid", "--fork", "--kill-child"]
    return [*cmd, sys.executable, "-I", "-S", str(_NSINIT), str(board_dir), "--", *argv]
