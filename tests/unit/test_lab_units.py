"""Lab pieces that are pure: the lab file, failure classes, regressions, retry backoff, trends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from toolchain.core.errors import EXIT_BAD_INPUT, EXIT_NOTHING_FITS, EXIT_OK, EXIT_TARGET, EXIT_VALIDATION, BadInputError
from toolchain.core.paths import targets_dir
from toolchain.fleet.classify import FailureClass, classify_exit, lab_exit_code, status_text
from toolchain.fleet.inventory import RetryPolicy, load_lab
from toolchain.fleet.regression import check_regression
from toolchain.fleet.trends import board_trends, parse_since, trends_markdown
from toolchain.store.records import BoardRecord


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return path


def test_example_lab_layers_defaults_labels_and_board(tmp_path: Path) -> None:
    lab = load_lab(targets_dir() / "lab.example.yaml")
    boards = {b.name: b for b in lab.boards}
    assert set(boards) == {"pi5-a", "pi5-b", "orin", "pixel"}
    a, b, orin, pixel = boards["pi5-a"], boards["pi5-b"], boards["orin"], boards["pixel"]
    assert (a.spec.kind, a.spec.user, a.spec.host, a.spec.board) == ("ssh", "pi", "pi5-a.lab.example", "rpi5-8gb")
    assert a.budget.decode_ms_per_token == 100.0 and a.budget.ttft_ms == 2000.0  # label pi5 over defaults
    assert b.budget.decode_ms_per_token == 80.0  # the board over its label
    assert (b.spec.port, b.spec.deploy_dir, b.spec.python) == (22, "~/edgedeploy", "/home/pi/venv/bin/python")
    assert a.timeouts.stages_s["transfer"] == 300.0 and b.timeouts.stages_s["transfer"] == 900.0  # label nvme
    assert orin.models == ("qwen2.5-1.5b-instruct",) and orin.timeouts.board_s == 2700.0 and orin.timeouts.stages_s["run"] == 1800.0
    assert (pixel.spec.kind, pixel.spec.adb_serial, pixel.ctx, pixel.threads) == ("adb", "R58M12345", 1024, 4)
    assert lab.retry == RetryPolicy(attempts=3, backoff_s=10.0, max_backoff_s=60.0) and lab.lock_ttl_s == 120.0
    assert [x.name for x in lab.select(["pi5"])] == ["pi5-a", "pi5-b"]
    assert [x.name for x in lab.select(["pi5", "nvme"])] == ["pi5-a"]
    with pytest.raises(BadInputError, match="no board has label"):
        lab.select(["gpu"])


@pytest.mark.parametrize(("text", "message"), [
    ("timeouts: {job: 10m, stages: {run: 20m}}\nboards: {a: local}",
     r"lab.yaml: timeouts.stages.run is 20m, more than the board timeout timeouts.job \(10m\)"),
    ("timeouts: {job: 10m, board: 1h}\nboards: {a: local}", r"lab.yaml: timeouts.board is 1h, more than the job timeout timeouts.job \(10m\)$"),
    ("timeouts: {board: 5m}\nboards: {a: {target: local, timeouts: {stages: {probe: 6m}}}}",
     r"lab.yaml: boards.a.timeouts.stages.probe is 6m, more than the board timeout timeouts.board \(5m\)"),
    ("labels: {slow: {timeouts: {lock_wait: 2h}}}\nboards: {a: {target: local, labels: [slow]}}",
     r"lab.yaml: labels.slow.timeouts.lock_wait is 2h, more than the board timeout"),
    ("timeouts: {stages: {bake: 1m}}\nboards: {a: local}", r"lab.yaml: timeouts.stages.bake: unknown stage"),
    ("timeouts: {board: soon}\nboards: {a: local}", r"lab.yaml: timeouts.board is 'soon', not a duration"),
    ("boards: {a: {target: local, budgte: 1s}}", r"lab.yaml: unknown key 'boards.a.budgte' \(did you mean 'boards.a.budget'\?\)"),
    ("boards: {a: {target: local, budget: 120}}", r"lab.yaml: boards.a.budget: budget '120' has no recognised unit"),
    ("defaults: {ctx: many}\nboards: {a: local}", r"lab.yaml: defaults: key 'ctx' should be an integer"),
    ("boards: {a: {target: pi@h, host: other}}", r"lab.yaml: boards.a: give 'target' or transport fields \(host\), not both"),
    ("boards: {a: {transport: ssh}}", r"lab.yaml: boards.a: ssh board without 'host'"),
    ("boards: {a: {target: nosuchname}}", r"lab.yaml: boards.a.target: unknown target 'nosuchname'"),
    ("name: x", r"lab.yaml: no boards"),
    ("offline: sometimes\nboards: {a: local}", r"lab.yaml: key 'offline' should be"),
    ("boards: {a: {target: local, offline: true}}", r"lab.yaml: unknown key 'boards.a.offline'"),  # lab-wide: the host downloads
])
def test_lab_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message) as info:
        load_lab(write(tmp_path, text))
    assert info.value.exit_code == EXIT_BAD_INPUT and info.value.hint


def test_default_timeouts_shrink_into_a_short_job(tmp_path: Path) -> None:
    lab = load_lab(write(tmp_path, "timeouts: {job: 90s}\nboards: {a: local}"))
    t = lab.boards[0].timeouts
    assert t.job_s == 90 and t.board_s == 90 and t.lock_wait_s == 90
    assert all(v <= 90 for v in t.stages_s.values()) and t.stages_s["validate"] == 60


def test_failure_classes_and_exit_codes() -> None:
    assert classify_exit(EXIT_OK) is None
    assert classify_exit(EXIT_TARGET) is FailureClass.INFRASTRUCTURE
    assert classify_exit(EXIT_BAD_INPUT) is classify_exit(EXIT_NOTHING_FITS) is FailureClass.CONFIGURATION
    assert classify_exit(EXIT_VALIDATION) is FailureClass.RESULT
    assert lab_exit_code([0, 0]) == 0
    assert lab_exit_code([0, EXIT_VALIDATION, EXIT_TARGET]) == EXIT_TARGET  # fix the fleet before reading results
    assert lab_exit_code([EXIT_TARGET, EXIT_BAD_INPUT]) == EXIT_BAD_INPUT  # fix the lab file first
    assert status_text(None, 0) == "passed"
    assert status_text(None, 2) == "passed after 2 retries"
    assert status_text(FailureClass.INFRASTRUCTURE, 1) == "infrastructure failure (after 1 retry)"


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(attempts=5, backoff_s=2, max_backoff_s=5)
    assert [p.delay_s(n) for n in (1, 2, 3, 4)] == [2, 4, 5, 5]


def test_regression_is_a_drop_beyond_max_of_5_percent_and_3_sd() -> None:
    quiet = [100.0, 100.5, 99.5, 100.0]
    assert check_regression(96.0, quiet) is not None and not check_regression(96.0, quiet).regressed  # type: ignore[union-attr]
    r = check_regression(94.0, quiet)
    assert r is not None and r.regressed and r.runs == 4 and "drop" in r.describe()
    noisy = [100.0, 80.0, 120.0, 90.0, 110.0]  # sd ~15.8: 3 sd ~47 tok/s
    assert not check_regression(70.0, noisy).regressed  # type: ignore[union-attr]
    assert check_regression(50.0, noisy).regressed  # type: ignore[union-attr]
    assert check_regression(1.0, []) is None  # a board's first run has nothing to regress from
    assert not check_regression(110.0, quiet).regressed  # type: ignore[union-attr]


def test_trends_per_board_and_since() -> None:
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    recs = [BoardRecord("pi", t0 + timedelta(days=i), True, 0, model="m", quant="q", decode_tokens_per_s=v) for i, v in enumerate([10.0, 10.2, 9.8])]
    recs.append(BoardRecord("pi", t0 + timedelta(days=3), False, 5, failure_class="result", model="m", quant="q", decode_tokens_per_s=8.0,
                            regression=True))
    (row,) = board_trends(recs)
    assert row["runs"] == 4 and row["passed"] == 3 and row["regressions"] == 1 and row["last_status"] == "result failure"
    assert row["latest_decode_tokens_per_s"] == 8.0 and row["baseline_decode_tokens_per_s"] == pytest.approx(10.0)
    assert row["change"] == pytest.approx(-0.2)
    assert "| pi | 4 | 3 | 1 |" in trends_markdown([row], "x") and "-20.0%" in trends_markdown([row], "x")
    assert parse_since("2025-06-02") == datetime(2025, 6, 2, tzinfo=UTC)
    with pytest.raises(BadInputError, match="not a date"):
        parse_since("last tuesday")


def test_a_lab_group_names_its_workers(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("boards:\n  a: {target: pi@10.0.0.5, workers: [b, pi@10.0.0.7]}\n  b: pi@10.0.0.6\n  c: pi@10.0.0.8\n")
    loaded = load_lab(lab)
    assert [x.name for x in loaded.boards] == ["a", "c"]  # b runs only as a's worker
    assert [w.host for w in loaded.boards[0].workers] == ["10.0.0.6", "10.0.0.7"]
    lab.write_text("boards:\n  a: {target: pi@10.0.0.5, workers: [a]}\n")
    with pytest.raises(BadInputError, match="a cannot be a worker here"):
        load_lab(lab)
    lab.write_text("boards:\n  a: {target: pi@10.0.0.5, workers: []}\n")
    with pytest.raises(BadInputError, match="workers should be a list"):
        load_lab(lab)
