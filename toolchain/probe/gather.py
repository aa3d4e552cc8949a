"""One round trip: every fact's command runs in one sh script; the output is split per fact.

A fact is a read-only shell command plus a pure parser (pyinfra's habit), but unlike pyinfra
all quick facts travel in a single script, so a probe over a slow link costs one round trip.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

MARK = "@@EDGEDEPLOY-FACT@@"


@dataclass(frozen=True)
class FactCommand:
    name: str
    command: str  # POSIX sh; may use $DEPLOY_DIR, $PY (the target's python) and the stage's env
    quick: bool = True  # False: stage 2 (measurements, slow tools), skipped by --quick
    record: bool = True  # False: gathered for the host's use only, never written by --record


def build_script(facts: list[FactCommand], *, deploy_dir: str, python: str, env: Mapping[str, str] | None = None) -> str:
    lines = [
        f"DEPLOY_DIR={shlex.quote(deploy_dir)}",
        f"PY={shlex.quote(python)}",
        # A deploy dir given as ~/... is expanded here: the host need not ask for $HOME first.
        'case $DEPLOY_DIR in "~") DEPLOY_DIR=$HOME;; "~/"*) DEPLOY_DIR="$HOME/${DEPLOY_DIR#"~/"}";; esac',
        "export DEPLOY_DIR LC_ALL=C",
        *(f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()),
        "command -v \"$PY\" >/dev/null 2>&1 || PY=python3",
    ]
    for fact in facts:
        # A subshell per fact: a cd or an exit in one command cannot leak into the next.
        lines.append(f"printf '\\n%s %s\\n' {shlex.quote(MARK)} {shlex.quote(fact.name)}")
        lines.append(f"( {fact.command}\n) 2>&1")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def split_output(text: str) -> dict[str, str]:
    """Script stdout -> {fact name: raw output}."""
    out: dict[str, str] = {}
    current: str | None = None
    buf: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(MARK + " "):
            if current is not None:
                out[current] = "\n".join(buf).strip("\n")
            current, buf = line[len(MARK) + 1 :].strip(), []
        elif current is not None:
            buf.append(line)
    if current is not None:
        out[current] = "\n".join(buf).strip("\n")
    return out
