"""The lab history on a real PostgreSQL server: a private cluster this test set-up starts
(Debian's postgresql package: scripts/setup.sh --test) on a free loopback port, and stops."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from toolchain.fleet.inventory import load_lab
from toolchain.fleet.job import run_lab
from toolchain.store.history import History
from toolchain.store.records import BoardRecord, DeviceMeasurement, RunRecord
from toolchain.store.schema import HEAD_REVISION

SETUP_HINT = "run scripts/setup.sh --test (it installs postgresql), or: apt-get install -y postgresql"


def pg_bin(tool: str) -> str:
    found = shutil.which(tool) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {tool} not found: {SETUP_HINT}")
    return found


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """initdb a throwaway cluster, start it on 127.0.0.1:<free port>, yield its URL, stop it."""
    root = Path(tempfile.mkdtemp(prefix="edgedeploy-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.getuid() == 0:  # postgres refuses to run as root: run it as the postgres system user
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    data, log = root / "data", root / "server.log"
    subprocess.run([*as_user, pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run([*as_user, pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
                   check=True, capture_output=True, timeout=90)
    try:
        subprocess.run([*as_user, pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "edgedeploy"],
                       check=True, capture_output=True, timeout=30)
        yield f"postgresql://postgres@127.0.0.1:{port}/edgedeploy"
    finally:
        subprocess.run([*as_user, pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_history_roundtrip(postgres_url: str) -> None:
    t0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
    with History(postgres_url) as h:
        assert h.revision() == HEAD_REVISION and h.display.startswith("postgresql+psycopg://postgres@127.0.0.1")
        for i, tps in enumerate([20.0, 20.4, 19.6]):
            at = t0 + timedelta(days=i)
            run_id = h.record(RunRecord("pg", "lab.yaml", at, at + timedelta(minutes=3), "0.1.0", 0, True, ci_job="99"), [
                BoardRecord("pi", at, True, 0, labels=("pi5", "nvme"), model="m", quant="Q4_1", decode_tokens_per_s=tps,
                            peak_rss_bytes=5 << 30, gguf_sha256="ab" * 32, temperature_after_c=61.5),
                BoardRecord("gone", at, False, 3, failure_class="infrastructure", retries=2)])
    with History(postgres_url) as h:  # a second open finds the schema current (no re-migration)
        assert h.revision() == HEAD_REVISION
        assert h.baseline("pi", "m", "Q4_1") == [19.6, 20.4, 20.0]  # newest first, passing runs only
        recs = h.results(board="pi")
        assert [r.decode_tokens_per_s for r in recs] == [20.0, 20.4, 19.6]
        last = recs[-1]
        assert last.labels == ("pi5", "nvme") and last.peak_rss_bytes == 5 << 30 and last.measured_at == t0 + timedelta(days=2)
        assert last.run_id == run_id and last.temperature_after_c == 61.5
        assert [r.board for r in h.results(since=t0 + timedelta(days=1, hours=1))] == ["pi", "gone"]
        assert [r.ci_job for r in h.runs()] == ["99", "99", "99"]


def test_lab_run_stores_into_postgres(postgres_url: str, tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"name: pg-lab\nboards:\n  here: {{target: local, deploy_dir: {tmp_path / 'deploy'}}}\n")
    from tests.e2e.test_lab_local import FakeShip

    result = run_lab(load_lab(lab), history_url=postgres_url, deploy_fn=FakeShip({"here": 25.0}))
    assert result.exit_code == 0 and result.doc["history"]["url"].startswith("postgresql+psycopg://")
    with History(postgres_url) as h:
        (rec,) = h.results(board="here")
    assert rec.passed and rec.decode_tokens_per_s == 25.0 and rec.run_id == result.doc["history"]["run_id"]


def test_device_measurements_in_postgres(postgres_url: str) -> None:
    """The planner's calibration in the same database: JSON and 64-bit columns round-trip."""
    at = datetime(2025, 6, 2, 8, tzinfo=UTC)
    m = DeviceMeasurement("Raspberry Pi 5|aarch64|4c|8GiB", at, "m", "Q4_K_M", measured_decode_s=0.05, bytes_per_token=6 << 30,
                          bandwidth_bytes_per_s=11.6e9, threads=4, ctx=4096, predicted_decode_s=0.045,
                          predicted_peak_bytes=7 << 30, measured_peak_bytes=(7 << 30) + 1, family="Q4_K",
                          bytes_by_type={"Q4_K": 5 << 30, "Q6_K": 1 << 30})
    with History(postgres_url) as h:
        h.add_measurements([m, DeviceMeasurement("other", at, "m", "Q8_0", 0.1, 10**9, 11.6e9)])
        assert h.measurements(m.fingerprint) == [m]
        assert [x.quant for x in h.measurements("other", limit=1)] == ["Q8_0"]
