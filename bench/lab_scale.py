"""Does the lab scale? 32 emulated SSH boards probed in parallel vs one board alone.

    .venv/bin/python bench/lab_scale.py [--boards 32] [--rounds 3]

Starts N real sshd boards on loopback (tests/boards/sshd.py, one per board, cycling through the
emulated board types), then times `lab run --probe-only --quick` (connect, board lock, quick
probe, unlock) in this process: one board alone, and all N at once (--parallel N). Rounds
alternate the two so drift in machine load hits both; medians are compared.
Goal: ratio = wall(N boards) / wall(1 board) <= 3.

It also prints where the CPU went: this process (edgedeploy: SSH clients, locks, reports) and the
boards (their sshd sessions and the probe's commands, which on this rig run on this machine's own
cores, not on N separate boards). N boards' CPU divided by the cores is a floor on the wall time
that no scheduling can beat; the printed floor ratio says how much of the ratio is the rig.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.boards.sshd import SshBoard  # noqa: E402
from toolchain.fleet.inventory import load_lab  # noqa: E402
from toolchain.fleet.job import run_lab  # noqa: E402

BOARD_TYPES = ("rpi4-4gb", "orangepi5", "jetson-orin-nano", "rpi4-32bit", "old-kernel")
GOAL = 3.0


def write_lab(path: Path, boards: list[SshBoard], deploy: Path) -> None:
    lines = ["name: scale", "retries: {attempts: 1}", "timeouts: {job: 10m, lock_wait: 1m}", "boards:"]
    for i, _ in enumerate(boards):
        lines.append(f"  b{i:02d}: {{transport: ssh, host: b{i:02d}, deploy_dir: {deploy / f'b{i:02d}'}, probe: quick}}")
    path.write_text("\n".join(lines) + "\n")


HZ = os.sysconf("SC_CLK_TCK")


def board_cpu_s(boards: list[SshBoard]) -> float:
    """CPU of every session the boards' sshd listeners have reaped (sessions end with each lab run)."""
    total = 0.0
    for b in boards:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # The listener: sshd rewrites its title but keeps its config path; sessions do not.
                if (entry / "comm").read_text().strip() != "sshd" or f"{b.workdir}/sshd_config".encode() not in (entry / "cmdline").read_bytes():
                    continue
                f = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in f[11:15]) / HZ  # utime stime cutime cstime
    return total


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(lab_path: Path, names: list[str] | None, parallel: int) -> float:
    lab = load_lab(lab_path)
    if names:
        lab = replace(lab, boards=tuple(b for b in lab.boards if b.name in names))
    t = time.perf_counter()
    result = run_lab(lab, parallel=parallel, probe_only=True)
    wall = time.perf_counter() - t
    if os.environ.get("LAB_SCALE_DEBUG"):
        per: dict[str, list[float]] = {}
        for b in result.doc["boards"]:
            for st in b["stages"]:
                per.setdefault(st["name"], []).append(st["duration_s"] or 0.0)
        print("  stages (median/max s): " + ", ".join(f"{k} {statistics.median(v):.2f}/{max(v):.2f}" for k, v in per.items()), file=sys.stderr)
    if result.exit_code != 0:
        failed = [b for b in result.doc["boards"] if not b["passed"]]
        raise SystemExit(f"lab run failed: {failed[0]['name']}: {failed[0]['error']}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--boards", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgedeploy-lab-scale-"))
    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    os.environ.update(HOME=str(home), EDGEDEPLOY_HOME=str(work / "state"))
    for var in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD"):
        os.environ.pop(var, None)
    boards: list[SshBoard] = []
    try:
        t = time.perf_counter()
        for i in range(args.boards):
            boards.append(SshBoard(BOARD_TYPES[i % len(BOARD_TYPES)]).start())
        print(f"started {len(boards)} sshd boards in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        # One ssh_config with a Host alias per board (its port, key and known_hosts).
        (home / ".ssh" / "config").write_text("".join(
            b.ssh_config_path.read_text().replace(f"Host {b.name}\n", f"Host b{i:02d}\n", 1) for i, b in enumerate(boards)))
        lab_path = work / "lab.yaml"
        write_lab(lab_path, boards, work / "deploy")
        timed(lab_path, None, args.boards)  # warm-up: imports, every board's first connection
        one, many, cpu = [], [], {"one": [0.0, 0.0], "many": [0.0, 0.0]}
        for r in range(args.rounds):
            order = [("one", 1), ("many", args.boards)] if r % 2 == 0 else [("many", args.boards), ("one", 1)]
            for kind, n in order:
                c_self, c_boards = self_cpu_s(), board_cpu_s(boards)
                wall = timed(lab_path, ["b00"] if n == 1 else None, n)
                time.sleep(0.3)  # let the listeners reap the last sessions
                cpu[kind][0] += self_cpu_s() - c_self
                cpu[kind][1] += board_cpu_s(boards) - c_boards
                (one if kind == "one" else many).append(wall)
                print(f"round {r + 1}: {n:2d} board(s) {wall:6.2f} s", file=sys.stderr)
        cores = len(os.sched_getaffinity(0))
        for kind, n in (("one", 1), ("many", args.boards)):
            own, board = (x / args.rounds for x in cpu[kind])
            print(f"cpu per run, {n:2d} board(s): edgedeploy {own:5.2f} s, boards (sshd sessions + probe commands) {board:5.2f} s")
        floor = max(statistics.median(one), sum(cpu["many"]) / args.rounds / cores)
        print(f"cpu-bound floor on this {cores}-core machine: {args.boards} boards >= {floor:.2f} s, "
              f"ratio >= {floor / statistics.median(one):.2f}")
        ratio = statistics.median(many) / statistics.median(one)
        print(f"1 board: {statistics.median(one):.2f} s; {args.boards} boards in parallel: {statistics.median(many):.2f} s "
              f"(medians of {args.rounds})")
        print(f"ratio {args.boards}/1 = {ratio:.2f} (goal <= {GOAL:g}): {'OK' if ratio <= GOAL else 'MISSED'}")
    finally:
        for b in boards:
            b.stop()


if __name__ == "__main__":
    main()
