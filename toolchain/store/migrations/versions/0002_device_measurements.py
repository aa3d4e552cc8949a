"""Device measurements: what the runner measured beside what the plan assumed, per device
fingerprint (the planner's calibration, until now calibration.jsonl in the data directory).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_measurements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("quant", sa.String(40), nullable=False),
        sa.Column("threads", sa.Integer, nullable=False, server_default="0"),
        sa.Column("ctx", sa.Integer, nullable=False, server_default="0"),
        sa.Column("predicted_decode_s", sa.Float),
        sa.Column("measured_decode_s", sa.Float, nullable=False),
        sa.Column("bytes_per_token", sa.BigInteger, nullable=False),
        sa.Column("predicted_peak_bytes", sa.BigInteger),
        sa.Column("measured_peak_bytes", sa.BigInteger),
        sa.Column("family", sa.String(40), nullable=False, server_default=""),
        sa.Column("bytes_by_type", sa.JSON, nullable=False),
        sa.Column("bandwidth_bytes_per_s", sa.Float, nullable=False),
    )
    # every plan reads one fingerprint's newest records
    op.create_index("ix_device_measurements_fp_time", "device_measurements", ["fingerprint", "measured_at"])


def downgrade() -> None:
    op.drop_index("ix_device_measurements_fp_time", table_name="device_measurements")
    op.drop_table("device_measurements")
