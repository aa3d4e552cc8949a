"""The shell side of every fact: read-only commands, each paired with a parser in parsers.py."""

from __future__ import annotations

from importlib.resources import files

from toolchain.probe.gather import FactCommand


def _snippet(name: str) -> str:
    return files("toolchain.probe").joinpath("snippets", name).read_text()


def _py(name: str) -> str:
    # Python snippets run by the target's interpreter; absent python3 just yields an error line.
    code = _snippet(name).replace("'", "'\"'\"'")
    return f"\"$PY\" -c '{code}'"


FACTS: list[FactCommand] = [
    FactCommand("uname", "uname -s; uname -r; uname -m"),
    FactCommand("os_release", "cat /etc/os-release 2>/dev/null || sw_vers 2>/dev/null"),
    FactCommand("meminfo", "cat /proc/meminfo 2>/dev/null || sysctl hw.memsize vm.page_free_count 2>/dev/null"),
    FactCommand("cpuinfo", "cat /proc/cpuinfo 2>/dev/null || sysctl -a 2>/dev/null | grep -E '^(machdep.cpu|hw\\.)'"),
    FactCommand(
        "cpu_max_freq",
        "for d in /sys/devices/system/cpu/cpu[0-9]*; do f=$d/cpufreq/cpuinfo_max_freq; "
        "[ -r $f ] && echo \"${d##*cpu} $(cat $f)\"; done",
    ),
    FactCommand("nproc", "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN"),
    FactCommand(
        "df",
        "d=$DEPLOY_DIR; while [ ! -e \"$d\" ] && [ \"$d\" != / ]; do d=$(dirname \"$d\"); done; "
        "df -Pk \"$d\"",
    ),
    FactCommand("dt_model", "cat /proc/device-tree/model 2>/dev/null | tr -d '\\000'"),
    FactCommand(
        "cgroup_memory",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null",
    ),
    FactCommand("getprop", "command -v getprop >/dev/null 2>&1 && getprop"),
    FactCommand("runtime", _py("runtime.py")),
    FactCommand("membw", _py("membw.py"), quick=False),
]
