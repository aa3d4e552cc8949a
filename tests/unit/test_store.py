"""The one measurement database: migrations, device measurements by fingerprint, the import of the
old calibration.jsonl, and the record a shipped run leaves (on the uncorrected basis)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config

from tests.unit.test_probe_support import board_raw
from toolchain.core.nouns import Budget, HostFacts, Plan, Telemetry
from toolchain.models.catalog import load_catalog
from toolchain.plan import calibration
from toolchain.plan.basis import Overrides, build_basis, uncorrected_decode_s
from toolchain.plan.boards import load_boards, lookup_board
from toolchain.plan.select import Option, PlanOptions, make_plan
from toolchain.probe.assemble import assemble_facts
from toolchain.store import history, records
from toolchain.store.history import History
from toolchain.store.records import DeviceMeasurement, RunRecord
from toolchain.store.schema import HEAD_REVISION, VERSION_TABLE

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)


def meas(fp: str = "dev", i: int = 0, **kw: object) -> DeviceMeasurement:
    base = DeviceMeasurement(fp, T0 + timedelta(hours=i), "m", "Q4_K_M", measured_decode_s=0.02 + i / 1000, bytes_per_token=10**8,
                             bandwidth_bytes_per_s=10e9, threads=4, ctx=4096, predicted_decode_s=0.018, predicted_peak_bytes=5 << 20,
                             measured_peak_bytes=6 << 20, family="Q4_K", bytes_by_type={"Q4_K": 9 * 10**7, "Q6_K": 10**7})
    return replace(base, **kw)  # type: ignore[arg-type]


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(history.MIGRATIONS))
    return cfg


def test_head_revision_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


def test_a_0001_database_upgrades_and_keeps_its_lab_history(tmp_path: Path) -> None:
    from alembic import command

    from toolchain.store.schema import lab_runs

    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a database the previous version wrote, with one lab run
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(lab_runs.insert().values(lab="old", source="lab.yaml", started_at=T0, finished_at=T0,
                                              edgedeploy_version="0.1.0", exit_code=0, passed=True))
    engine.dispose()
    with History(url) as h:
        assert h.revision() == HEAD_REVISION
        assert [r.lab for r in h.runs()] == ["old"]
        h.add_measurements([meas()])
        assert h.measurements("dev") == [meas()]


def test_a_current_database_opens_without_alembic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan opens the database: at the head revision, Alembic's upgrade is not run."""
    import alembic.command

    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    History(url).close()
    monkeypatch.setattr(alembic.command, "upgrade", lambda *a, **k: pytest.fail("upgraded a current database"))
    with History(url) as h:
        assert h.revision() == HEAD_REVISION
        assert sa.inspect(h.engine).has_table("device_measurements") and sa.inspect(h.engine).has_table(VERSION_TABLE)


def test_measurements_by_fingerprint_newest_kept(tmp_path: Path) -> None:
    with History(f"sqlite:///{tmp_path / 'h.sqlite'}") as h:
        h.add_measurements([meas("b", 0)] + [meas("a", i) for i in (2, 0, 1)])
        got = h.measurements("a")
        assert [m.measured_at for m in got] == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]  # oldest first
        assert got[0] == meas("a", 0) and got[0].bytes_by_type == {"Q4_K": 9 * 10**7, "Q6_K": 10**7}
        assert [m.measured_at.hour for m in h.measurements("a", limit=2)] == [13, 14]  # the newest two
        assert h.measurements("nobody") == []
        h.add_measurements([meas("c", predicted_decode_s=None, predicted_peak_bytes=None, measured_peak_bytes=None,
                                 bytes_by_type={})])
        (c,) = h.measurements("c")
        assert c.predicted_decode_s is None and c.measured_peak_bytes is None and c.bytes_by_type == {}


def test_calibration_and_lab_history_share_one_database(edgedeploy_home: Path) -> None:
    fp = "Raspberry Pi 5|aarch64|4c|8GiB"
    with History() as h:
        h.add_measurements([meas(fp)])
        h.record(RunRecord("lab", "lab.yaml", T0, T0, "0.1.0", 0, True), [])
    assert calibration.load(fp) == [meas(fp)]
    assert records.default_url() == f"sqlite:///{edgedeploy_home / 'history.sqlite'}"
    with History() as h:
        assert len(h.runs()) == 1


def test_legacy_jsonl_is_imported_once(edgedeploy_home: Path) -> None:
    legacy = edgedeploy_home / "calibration.jsonl"
    legacy.parent.mkdir(parents=True)
    rec = {"fingerprint": "dev", "time": T0.timestamp(), "model": "m", "quant": "Q4_K_M", "threads": 4, "ctx": 4096,
           "predicted_decode_s": 0.018, "measured_decode_s": 0.02, "bytes_per_token": 10**8, "predicted_peak_bytes": 5 << 20,
           "measured_peak_bytes": 6 << 20, "family": "Q4_K", "bytes_by_type": {"Q4_K": 9 * 10**7, "Q6_K": 10**7},
           "bandwidth_bytes_per_s": 10e9}
    lines = [json.dumps(rec), "{torn", json.dumps({**rec, "fingerprint": "other"}),
             json.dumps({**rec, "time": T0.timestamp() + 3600, "uncorrected": False}),  # an old, scaled prediction
             json.dumps({"fingerprint": "dev", "time": 1.0, "measured_decode_s": 0.05, "predicted_decode_s": 0.04})]  # oldest format
    legacy.write_text("\n".join(lines) + "\n")
    got = calibration.load("dev")
    assert not legacy.exists() and (edgedeploy_home / "calibration.jsonl.imported").exists()
    assert [m.measured_at for m in got] == [datetime.fromtimestamp(1.0, UTC), T0, T0 + timedelta(hours=1)]
    assert got[1] == meas("dev", measured_decode_s=0.02)
    assert got[2].predicted_decode_s is None  # not on the uncorrected basis: kept out of correction()
    assert got[0].bytes_per_token == 0 and got[0].bytes_by_type == {}  # fit_device skips it, correction() uses it
    assert calibration.correction(got).records == 2
    assert len(calibration.load("other")) == 1
    assert len(calibration.load("dev")) == 3  # imported once
    legacy.write_text(json.dumps({**rec, "time": T0.timestamp() + 7200}) + "\n")  # an old version wrote again: that one too
    assert len(calibration.load("dev")) == 4


# --- the record a shipped run leaves ---------------------------------------------------------


def plan_for(facts: HostFacts, records: list[DeviceMeasurement]) -> Plan:
    board = lookup_board(load_boards(), "orangepi5-8gb")
    basis, speed, threads = build_basis(facts, board, Overrides(), records=records)
    entry = load_catalog()["qwen2.5-0.5b-instruct"]
    q = "Q4_K_M"
    return make_plan([Option(entry, q, entry.quants[q].file_bytes, "catalog", None)], basis, speed,
                     Budget(decode_ms_per_token=1e9), PlanOptions(ctx=2048, threads=threads))


def telemetry(decode_tps: float, rss: int) -> Telemetry:
    return Telemetry(load_s=1.0, ttft_s=0.1, prefill_tokens_per_s=100.0, decode_tokens_per_s=decode_tps,
                     decode_ms_p50=1000 / decode_tps, decode_ms_p90=1000 / decode_tps, peak_rss_bytes=rss, llama_cpp="0.3.36",
                     threads=4, ctx=2048, model_sha256="ab" * 32)


def test_record_run_stores_the_uncorrected_prediction() -> None:
    facts = assemble_facts(board_raw("orangepi5"), target="t", deploy_dir="/d", quick=True)
    plan0 = plan_for(facts, [])
    assert plan0.selected is not None and plan0.basis.memory_offset_bytes == 0
    p0 = plan0.selected.predicted
    s0 = p0.decode_ms_per_token / 1000
    # no measurements yet: the plan's prediction is the uncorrected one
    assert uncorrected_decode_s(plan0.basis, p0) == pytest.approx(s0, rel=1e-4)
    fp = calibration.fingerprint(facts)
    calibration.record_run(facts, plan0, telemetry(0.5 / s0, p0.bench_rss_bytes + (50 << 20)))
    (m,) = calibration.load(fp)
    assert (m.model, m.quant, m.ctx, m.family) == ("qwen2.5-0.5b-instruct", "Q4_K_M", 2048, p0.kernel_family)
    assert m.measured_decode_s == pytest.approx(2 * s0) and m.predicted_decode_s == pytest.approx(s0, rel=1e-4)
    assert m.bytes_by_type == p0.bytes_by_type and m.bandwidth_bytes_per_s == plan0.basis.bandwidth_bytes_per_s
    assert m.predicted_peak_bytes == p0.bench_rss_bytes and m.measured_peak_bytes == p0.bench_rss_bytes + (50 << 20)
    # the next plan is fitted (slower, bigger); what its run records is still against the defaults
    plan1 = plan_for(facts, calibration.load(fp))
    assert plan1.selected is not None
    p1 = plan1.selected.predicted
    assert p1.decode_ms_per_token > 1.3 * p0.decode_ms_per_token and plan1.basis.memory_offset_bytes == 50 << 20
    m1 = calibration.measurement(facts, plan1, telemetry(1.0, p1.bench_rss_bytes))
    assert m1.predicted_decode_s == pytest.approx(s0, rel=1e-4) and m1.predicted_peak_bytes == p0.bench_rss_bytes
    assert calibration.correction(calibration.load(fp)).factor == pytest.approx(2.0, rel=1e-3)


def test_a_new_calibration_replaces_the_last_one_and_keeps_the_runs(edgedeploy_home: Path) -> None:
    fp = "Raspberry Pi 5|aarch64|4c|8GiB"
    run = replace(meas(fp), model="run")
    calibration.record_calibration([replace(meas(fp), model="cal-1", origin="calibration")])
    with History() as h:
        h.add_measurements([run])
    calibration.record_calibration([replace(meas(fp), model="cal-2", origin="calibration"),
                                    replace(meas(fp), model="cal-3", origin="calibration")])
    calibration.record_calibration([replace(meas("other"), model="cal-x", origin="calibration")])
    assert sorted(m.model for m in calibration.load(fp)) == ["cal-2", "cal-3", "run"]
