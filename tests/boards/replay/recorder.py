"""Record mode of a replay board's login shell: run a command for real and keep its answer.

Usage (from the login shell, replay/board.py writes it): python -I recorder.py REC_DIR COMMAND

Only the commands the replay shell answers come here: the probe script (`sh -s`, its script on
stdin), the board's python with `-c` (device scripts that only read the board), and the release's
runner (`run.sh bench`). Each runs in dash exactly as sshd would have run it; its output goes
back to the host unchanged and into REC_DIR as a small sh snippet the replay shell sources:
sleep for the recorded duration, print the recorded output, exit with the recorded status.
The runner's snippet also writes its telemetry lines at the pace they were written (the events'
own timestamps) and its log. Stdlib only; speed does not matter here, only fidelity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RUN_ID_PREFIX = "EDGEDEPLOY_RUN_ID="
RUN_ID_END = "; export EDGEDEPLOY_RUN_ID; "
COALESCE_S = 0.02  # telemetry lines closer than this are written together (one process less)


def body_of(command: str) -> str:
    """The command without the transport's per-run tag (it differs on every call)."""
    if command.startswith(RUN_ID_PREFIX) and RUN_ID_END in command:
        return command.split(RUN_ID_END, 1)[1]
    return command


def key_of(body: str, stdin: bytes | None) -> str:
    """What the replay shell computes: md5 of the command, and for `sh -s` of its script too."""
    data = os.fsencode(body) + (b"\n" + stdin if stdin is not None else b"")
    return hashlib.md5(data).hexdigest()


def is_runner(body: str) -> bool:
    return "/run.sh bench" in body and " --out " in body


def runner_out(body: str) -> str:
    return body.split(" --out ", 1)[1].split(" ", 1)[0]


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def write_answer(rec: Path, key: str, body: str, status: int, out: bytes, err: bytes, duration_s: float, drain: bool) -> None:
    (rec / f"{key}.out").write_bytes(out)
    (rec / f"{key}.err").write_bytes(err)
    lines = [f"# {body.splitlines()[0][:100] if body else ''}"]
    if drain:  # the host sent input (a GGUF header): read it, as the real command did
        lines.append("cat > /dev/null")
    lines.append(f"sleep {duration_s:.3f}")
    if out:
        lines.append(f"cat {_q(rec / f'{key}.out')}")
    if err:
        lines.append(f"cat {_q(rec / f'{key}.err')} >&2")
    lines.append(f"exit {status}")
    _write_atomic(rec / f"{key}.sh", "\n".join(lines) + "\n")
    _note(rec, {"key": key, "kind": "answer", "command": body[:200], "status": status, "duration_s": duration_s})


def write_runner(rec: Path, started: float, duration_s: float, status: int, out: bytes, err: bytes, telemetry: bytes,
                 log: bytes) -> None:
    """runner.sh: sourced with $out set to the --out path the host asked for."""
    chunks: list[tuple[float, bytes]] = []  # (seconds after start, lines)
    for line in telemetry.splitlines(keepends=True):
        try:
            at = max(0.0, float(json.loads(line).get("time", started)) - started)
        except (ValueError, AttributeError):
            at = chunks[-1][0] if chunks else 0.0
        if chunks and at - chunks[-1][0] < COALESCE_S:
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + line)
        else:
            chunks.append((at, line))
    script = ['d=${out%/*}', ': > "$out"']
    elapsed = 0.0
    for i, (at, lines) in enumerate(chunks):
        (rec / f"runner.{i}.jsonl").write_bytes(lines)
        wait = min(max(0.0, at - elapsed), duration_s)
        if wait > 0.0005:
            script.append(f"sleep {wait:.3f}")
        script.append(f'cat {_q(rec / f"runner.{i}.jsonl")} >> "$out"')
        elapsed = max(elapsed, at)
    (rec / "runner.log").write_bytes(log)
    if log:
        script.append(f'cat {_q(rec / "runner.log")} >> "$d/runner.log"')
    if duration_s - elapsed > 0.0005:
        script.append(f"sleep {duration_s - elapsed:.3f}")
    (rec / "runner.out").write_bytes(out)
    (rec / "runner.err").write_bytes(err)
    if out:
        script.append(f"cat {_q(rec / 'runner.out')}")
    if err:
        script.append(f"cat {_q(rec / 'runner.err')} >&2")
    script.append(f"exit {status}")
    _write_atomic(rec / "runner.sh", "\n".join(script) + "\n")
    _note(rec, {"key": "runner", "kind": "runner", "status": status, "duration_s": duration_s, "events": telemetry.count(b"\n"),
                "chunks": len(chunks)})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _note(rec: Path, entry: dict[str, object]) -> None:
    with (rec / "index.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> int:
    rec, command = Path(argv[0]), argv[1]
    body = body_of(command)
    started, t0 = time.time(), time.monotonic()
    if is_runner(body):  # the runner watches the stdin the host holds open (--watch-stdin): passed on, not read to its end
        stdin = b""
        proc = subprocess.run(["/bin/dash", "-c", command], capture_output=True)
    else:
        stdin = sys.stdin.buffer.read()  # the host ends any other command's input (EOF), so this returns
        proc = subprocess.run(["/bin/dash", "-c", command], input=stdin, capture_output=True)
    duration = time.monotonic() - t0
    sys.stdout.buffer.write(proc.stdout)
    sys.stderr.buffer.write(proc.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if is_runner(body):
        out = Path(runner_out(body))
        telemetry = out.read_bytes() if out.is_file() else b""
        log_path = out.parent / "runner.log"
        log = log_path.read_bytes() if log_path.is_file() else b""
        write_runner(rec, started, duration, proc.returncode, proc.stdout, proc.stderr, telemetry, log)
    else:
        script = body == "sh -s"
        write_answer(rec, key_of(body, stdin if script else None), body, proc.returncode, proc.stdout, proc.stderr, duration,
                     drain=bool(stdin) and not script)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
