"""Lab runs and one row per board and run.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lab_runs",
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
    op.create_table(
        "board_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("lab_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("labels", sa.Text, nullable=False, server_default=""),
        sa.Column("target", sa.Text),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("failure_class", sa.String(20)),
        sa.Column("exit_code", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
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
        sa.Column("regression", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("run_dir", sa.Text),
    )
    op.create_index("ix_board_results_board_time", "board_results", ["board", "measured_at"])


def downgrade() -> None:
    op.drop_index("ix_board_results_board_time", table_name="board_results")
    op.drop_table("board_results")
    op.drop_table("lab_runs")
