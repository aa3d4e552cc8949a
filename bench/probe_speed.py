"""Wall time of a quick probe over SSH to an emulated board on loopback (goal: median <= 1.0 s).

    .venv/bin/python bench/probe_speed.py [--board rpi4-4gb] [--runs 7] [--no-cli]

Starts a real sshd on the board (tests/boards/sshd.py), then times, alternating, each run from
nothing to HostFacts:
  probe  in this process: SSH connect + authenticate, the home-directory lookup the CLI does,
         the one-script round trip, parsing; a fresh connection every run.
  cli    `edgedeploy probe ALIAS --quick --json` as a user runs it: the same, plus the Python
         interpreter starting and importing the CLI.
Prints every run and the median of each; the first line of the summary is the headline figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.boards.sshd import SshBoard  # noqa: E402
from toolchain.core.nouns import TargetSpec  # noqa: E402
from toolchain.probe import probe  # noqa: E402
from toolchain.probe.reach import deploy_root  # noqa: E402
from toolchain.transports.ssh import SshTransport  # noqa: E402

GOAL_S = 1.0


def probe_once(board: SshBoard) -> float:
    spec = TargetSpec(name=board.name, kind="ssh")
    start = time.perf_counter()
    with SshTransport(spec, ssh_config_path=str(board.ssh_config_path)) as t:
        facts = probe(t, spec, deploy_dir=deploy_root(spec, t), quick=True)
    elapsed = time.perf_counter() - start
    assert facts.cpu.cores > 0 and facts.memory.total_bytes > 0, facts
    return elapsed


def cli_once(alias: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(REPO / ".venv/bin/edgedeploy"), "probe", alias, "--quick", "--json"], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"edgedeploy probe failed:\n{proc.stderr}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default="rpi4-4gb")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--no-cli", action="store_true", help="time only the in-process probe")
    args = ap.parse_args()
    with SshBoard(args.board) as board, tempfile.TemporaryDirectory(prefix="probe-speed-") as tmp:
        # The CLI reaches the board through a Host alias in a private ~/.ssh/config.
        home = Path(tmp)
        (home / ".ssh").mkdir()
        alias = "probe-speed-board"
        (home / ".ssh" / "config").write_text(board.ssh_config_path.read_text().replace(f"Host {board.name}", f"Host {alias}"))
        env = {**os.environ, "HOME": str(home), "EDGEDEPLOY_HOME": str(home / "edgedeploy")}
        probe_once(board)  # warm-up: first connection, page cache
        if not args.no_cli:
            cli_once(alias, env)
        times: dict[str, list[float]] = {"probe": [], "cli": []}
        for i in range(args.runs):
            times["probe"].append(probe_once(board))
            if not args.no_cli:
                times["cli"].append(cli_once(alias, env))
            print(f"run {i + 1}: " + "  ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items() if v), flush=True)
    print(f"board {args.board} over SSH on loopback, {args.runs} runs, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, values in times.items():
        if values:
            med = statistics.median(values)
            verdict = "ok" if med <= GOAL_S else f"over the {GOAL_S:.1f} s goal"
            print(f"median quick {name:5s} {med:.3f} s (min {min(values):.3f}, max {max(values):.3f}) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
