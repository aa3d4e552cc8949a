"""The database's tables as SQLAlchemy Core objects for queries; migrations/versions/ creates them.

Keep the two in step: a new column is a new migration plus a Column here (and HEAD_REVISION).
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "edgedeploy_alembic_version"  # not alembic_version: a shared PostgreSQL database may hold others
# The newest migration: History.open skips Alembic (and its import) when the database is at it.
# tests/test_store.py checks it against migrations/versions/.
HEAD_REVISION = "0004"

metadata = sa.MetaData()

lab_runs = sa.Table(
    "lab_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lab", sa.String(200), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ci_job", sa.String(100)),
    sa.Column("edgedeploy_version", sa.String(40), nullable=False),
    sa.Column("exit_code", sa.Integer, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("run_dir", sa.Text),
)

board_results = sa.Table(
    "board_results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("lab_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("board", sa.String(200), nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("target", sa.Text),
    sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("failure_class", sa.String(20)),
    sa.Column("exit_code", sa.Integer, nullable=False),
    sa.Column("retries", sa.Integer, nullable=False),
    sa.Column("model", sa.String(200)),
    sa.Column("quant", sa.String(40)),
    sa.Column("gguf_sha256", sa.String(64)),
    sa.Column("llama_cpp", sa.String(40)),
    sa.Column("fingerprint", sa.Text),
    sa.Column("decode_tokens_per_s", sa.Float),
    sa.Column("predicted_decode_tokens_per_s", sa.Float),
    sa.Column("decode_ms_p50", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("peak_rss_bytes", sa.BigInteger),
    sa.Column("temperature_before_c", sa.Float),
    sa.Column("temperature_after_c", sa.Float),
    sa.Column("budget_ms", sa.Float),
    sa.Column("regression", sa.Boolean, nullable=False),
    sa.Column("run_dir", sa.Text),
)

device_measurements = sa.Table(
    "device_measurements", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("quant", sa.String(40), nullable=False),
    sa.Column("threads", sa.Integer, nullable=False),
    sa.Column("ctx", sa.Integer, nullable=False),
    sa.Column("predicted_decode_s", sa.Float),
    sa.Column("measured_decode_s", sa.Float, nullable=False),
    sa.Column("bytes_per_token", sa.BigInteger, nullable=False),
    sa.Column("predicted_peak_bytes", sa.BigInteger),
    sa.Column("measured_peak_bytes", sa.BigInteger),
    sa.Column("family", sa.String(40), nullable=False),
    sa.Column("bytes_by_type", sa.JSON, nullable=False),
    sa.Column("bandwidth_bytes_per_s", sa.Float, nullable=False),
    sa.Column("n_layer", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_per_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("origin", sa.String(20), nullable=False, server_default="run"),
)

link_measurements = sa.Table(
    "link_measurements", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("head_fingerprint", sa.Text, nullable=False),
    sa.Column("worker_fingerprint", sa.Text, nullable=False),
    sa.Column("address", sa.String(255), nullable=False),
    sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("head", sa.Text, nullable=False),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("rtt_s", sa.Float, nullable=False),
    sa.Column("rtt_p90_s", sa.Float, nullable=False),
    sa.Column("rtt_min_s", sa.Float, nullable=False),
    sa.Column("throughput_bytes_per_s", sa.Float, nullable=False),
    sa.Column("samples", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bulk_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("method", sa.Text, nullable=False, server_default=""),
)
