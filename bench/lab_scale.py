"""Does the lab scale? A full `lab run` on N replay boards at once vs one board alone.

    .venv/bin/python bench/lab_scale.py [--boards 32] [--rounds 3] [--probe-only]

The boards are tests/boards/replay: each in its own network namespace behind a link with a 20 ms
round trip (netem, or a TUN delay line where the kernel has no netem), a real sshd, and answers
recorded once from a board that really computed (the probe, the board's python scripts, the
runner's telemetry at its recorded pace), so that what they cost this machine is a few
processes per command. Everything else is edgedeploy's real code: its SSH client (fabric,
paramiko), board locks, provisioning check, plan file, dry load, package, transfer of a 1.4 MB
model, run, validate, history, the lab reports. Before every timed run each board's deploy root
is emptied: each run is a first ship, with the transfer.

Rounds alternate one board and N boards (drift in machine load hits both); medians are compared.
Goal: ratio = wall(N boards) / wall(1 board) <= 3.

    .venv/bin/python bench/lab_scale.py --faults [--boards 6]

--faults runs one full lab instead, each board getting one of tests/boards/replay/faults.py's
scenarios in turn (clean, lossy link, sshd killed mid-transfer, reboot mid-run, sshd dead,
sshd killed mid-install, sshd killed mid-run, reboot mid-transfer), and prints each board's outcome, failure class, attempts and wall time
(the same lab as tests/e2e/test_lab_faults.py, which asserts on it).

Also printed: edgedeploy's host CPU per board (this process, user+sys, and any child it ran, over
N), the boards' and links' CPU apart from it, and whether anything else used this machine
meanwhile (other processes' CPU from /proc/stat, load average): a busy machine is named.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.boards.replay import faults, fleet  # noqa: E402
from tests.boards.replay.board import ReplayBoard  # noqa: E402
from tests.boards.replay.board import board_cpu_s as rig_cpu_s  # noqa: E402
from toolchain.core.nouns import BUSY_OTHER_CPU_SHARE, BUSY_STEAL_SHARE  # noqa: E402
from toolchain.device.runner import cpu_jiffies  # noqa: E402

GOAL = 3.0
HZ = os.sysconf("SC_CLK_TCK")
SETTLE_S = 0.3  # after a run: let sshd reap the last sessions, so their CPU is counted


@dataclass
class Sample:
    wall_s: float
    own_cpu_s: float  # edgedeploy: this process and the children it reaped
    board_cpu_s: float
    link_cpu_s: float
    other_cpu_s: float | None  # the rest of the machine (None off Linux)
    steal_s: float | None  # what the hypervisor took
    load: float  # 1-minute load average when the run started (ours included: for the record only)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> median seconds over the boards

    def busy(self) -> str | None:
        """Why the machine was not ours alone during the run: the runner's busy-board rule (other
        processes above a quarter of a core, steal above 5 %), applied to this machine."""
        why = []
        if self.other_cpu_s is not None and self.other_cpu_s / self.wall_s > BUSY_OTHER_CPU_SHARE:
            why.append(f"other processes used {self.other_cpu_s / self.wall_s:.0%} of a core")
        if self.steal_s is not None and self.steal_s / self.wall_s > BUSY_STEAL_SHARE:
            why.append(f"the hypervisor took {self.steal_s / self.wall_s:.0%} of a core")
        return "; ".join(why) or None


def own_cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(lab: Path, boards: list[ReplayBoard], n: int, probe_only: bool) -> Sample:
    used = boards[:n]
    for b in used:
        if not probe_only:
            b.wipe()
    load0 = os.getloadavg()[0]
    own0, board0, link0, cpu0 = own_cpu_s(), rig_cpu_s(used), sum(b.link_cpu_s() for b in used), cpu_jiffies()
    t = time.perf_counter()
    result = fleet.run(lab, probe_only=probe_only, parallel=n, names=[f"b{i:02d}" for i in range(n)])
    wall = time.perf_counter() - t
    own = own_cpu_s() - own0
    time.sleep(SETTLE_S)
    board, link, cpu = rig_cpu_s(used) - board0, sum(b.link_cpu_s() for b in used) - link0, cpu_jiffies()
    why = fleet.failure(result)
    if why is not None:
        raise SystemExit(f"lab run failed: {why} (see {result.run_dir})")
    missed = sorted({m for b in used for m in b.misses()})
    if missed:
        raise SystemExit("commands not in the recording ran for real on the boards (the bench would measure them): " + "; ".join(missed[:3]))
    # Everything the machine did meanwhile, less what we know of, over the run and the settle time.
    other = None if cpu is None or cpu0 is None else max(0.0, (cpu[0] - cpu0[0]) / HZ - own - board - link)
    steal = None if cpu is None or cpu0 is None else (cpu[1] - cpu0[1]) / HZ
    per: dict[str, list[float]] = {}
    for row in result.doc["boards"]:
        for st in row["stages"]:
            per.setdefault(st["name"], []).append(st["duration_s"] or 0.0)
    return Sample(wall, own, board, link, other, steal, load0, {k: statistics.median(v) for k, v in per.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boards", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probe-only", action="store_true", help="time `lab run --probe-only --quick` instead of a full run")
    ap.add_argument("--board", default="rpi4-4gb", help="the emulated board recorded (tests/boards)")
    ap.add_argument("--faults", action="store_true", help="one full lab with a fault per board; print outcomes, attempts, wall time")
    args = ap.parse_args()
    if args.faults and args.probe_only:
        ap.error("--faults runs a full lab: leave out --probe-only")
    if args.faults and "--boards" not in sys.argv:
        args.boards = len(faults.SCENARIOS)
    if args.boards < 1 or args.rounds < 1:
        ap.error("--boards and --rounds must be at least 1")

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # the finally below takes the boards down

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (a background job)
    work = Path(tempfile.mkdtemp(prefix="edgedeploy-lab-scale-"))
    home = work / "home"
    home.mkdir()
    from toolchain.core.paths import cache_dir

    os.environ["EDGEDEPLOY_CACHE"] = str(cache_dir())  # the shared model cache, before HOME moves
    os.environ.update(HOME=str(home), EDGEDEPLOY_HOME=str(work / "state"), EDGEDEPLOY_CALIBRATE="0")
    for var in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD", "EDGEDEPLOY_SSH_COPY", "CI_JOB_ID", "GITHUB_RUN_ID"):
        os.environ.pop(var, None)
    kind = "probe-only" if args.probe_only else "full"
    boards: list[ReplayBoard] = []
    try:
        rec = fleet.record(work, home, full=not args.probe_only, board=args.board)
        print(f"recorded a {kind} lab run on {rec.board} (computing for real) in {rec.seconds:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        for _ in range(args.boards):
            boards.append(ReplayBoard(rec.dir, board=args.board).start())
        fleet.write_ssh_config(home, boards)
        lab = fleet.write_lab(work / "lab.yaml", args.boards, rec.plan)
        print(f"started {len(boards)} replay boards ({boards[0].link}, {2 * boards[0].delay_ms:g} ms round trip) in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        if args.faults:
            run_faults(work, rec, boards)  # its work dir stays: the lab's reports are in it
            return
        timed(lab, boards, args.boards, args.probe_only)  # warm-up: imports, every board's first connection
        runs: dict[int, list[Sample]] = {1: [], args.boards: []}
        for r in range(args.rounds):
            order = [1, args.boards] if r % 2 == 0 else [args.boards, 1]
            for n in order:
                s = timed(lab, boards, n, args.probe_only)
                runs[n].append(s)
                print(f"round {r + 1}: {n:2d} board(s) {s.wall_s:6.2f} s  (edgedeploy {s.own_cpu_s:5.2f} s CPU, boards {s.board_cpu_s:5.2f} s, "
                      f"links {s.link_cpu_s:4.2f} s, other {s.other_cpu_s if s.other_cpu_s is not None else float('nan'):4.2f} s)",
                      file=sys.stderr)
        report(args.boards, args.rounds, kind, f"{boards[0].link}, {2 * boards[0].delay_ms:g} ms round trip", runs)
        shutil.rmtree(work, ignore_errors=True)  # kept when anything failed: its run directories say what
    finally:
        for b in boards:
            b.stop()


def run_faults(work: Path, rec: fleet.Recording, boards: list[ReplayBoard]) -> None:
    """One full lab, board i getting faults.SCENARIOS[i % 8]; prints the outcomes table."""
    size = (rec.plan.parent / "synth-replay.gguf").stat().st_size
    names = [f"{faults.SCENARIOS[i % len(faults.SCENARIOS)]}-{i:02d}" for i in range(len(boards))]
    armed = {n: f for n, b in zip(names, boards, strict=True) if (f := faults.scenario(n.rsplit("-", 1)[0], b, size)) is not None}
    fleet.write_ssh_config(Path(os.environ["HOME"]), boards, names)
    lab = fleet.write_lab(work / "faults.yaml", len(boards), rec.plan, name="faults", names=names,
                          retries="{attempts: 3, backoff: 2s}", timeouts="{job: 30m, lock_wait: 2m}")
    for f in armed.values():
        f.start()
    t = time.perf_counter()
    result = fleet.run(lab, probe_only=False, parallel=len(boards))
    wall = time.perf_counter() - t
    for f in armed.values():
        f.stop()
    print(f"lab run with faults on {len(boards)} replay boards: exit {result.exit_code} (report: {result.run_dir})")
    print(faults.outcomes_table(list(result.doc["boards"]), armed, wall))


def report(n: int, rounds: int, kind: str, link: str, runs: dict[int, list[Sample]]) -> None:
    cores = len(os.sched_getaffinity(0))
    one, many = runs[1], runs[n]

    def med(samples: list[Sample], attr: str) -> float:
        return statistics.median(float(getattr(s, attr)) for s in samples)

    print(f"lab run ({kind}) on replay boards ({link}), {rounds} round(s), medians:")
    stages = list(dict.fromkeys([*many[0].stages, *one[0].stages]))
    print(f"  stages, s per board (1 board / {n} boards): " + ", ".join(
        f"{st} {statistics.median(s.stages.get(st, 0.0) for s in one):.2f}/{statistics.median(s.stages.get(st, 0.0) for s in many):.2f}"
        for st in stages))
    for label, samples, k in (("1 board", one, 1), (f"{n} boards", many, n)):
        print(f"  {label:>9}: wall {med(samples, 'wall_s'):6.2f} s; CPU per board: edgedeploy {med(samples, 'own_cpu_s') / k:.3f} s, "
              f"board {med(samples, 'board_cpu_s') / k:.3f} s, link {med(samples, 'link_cpu_s') / k:.3f} s")
    own = med(many, "own_cpu_s")
    total = own + med(many, "board_cpu_s") + med(many, "link_cpu_s")
    floor = max(med(one, "wall_s"), total / cores, own)
    print(f"  floors for {n} boards: all their CPU over {cores} cores {total / cores:.2f} s; edgedeploy's own CPU {own:.2f} s "
          f"(Python runs one thread at a time); so ratio >= {floor / med(one, 'wall_s'):.2f} before any waiting")
    print(f"edgedeploy host CPU per board: {own / n:.3f} s with {n} boards at once ({med(one, 'own_cpu_s'):.3f} s for one board alone, "
          "the lab's fixed costs included)")
    ratio = med(many, "wall_s") / med(one, "wall_s")
    print(f"ratio {n}/1 = {ratio:.2f} (goal <= {GOAL:g}): {'OK' if ratio <= GOAL else 'MISSED'}")
    busy = [f"round {r + 1}, {k} board{'s' if k > 1 else ''}: {why}"
            for r, pair in enumerate(zip(one, many, strict=True)) for k, s in zip((1, n), pair, strict=True) if (why := s.busy()) is not None]
    if busy:
        print("the machine was busy during the measurement, so these figures overstate edgedeploy's cost: " + "; ".join(busy))
    else:
        print(f"the machine was otherwise idle during every measurement (load average {min(s.load for s in one + many):.1f}-"
              f"{max(s.load for s in one + many):.1f} when they started, this bench's own work included)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): the replay boards and their links are stopped", file=sys.stderr)
        sys.exit(130)
