"""Link measurements: the network from a head to a worker (round trip, throughput), measured by
the boards for a model split across them, reused by later plans of the same pair.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "link_measurements",
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
    # a plan reads the newest measurement of one pair at one address
    op.create_index("ix_link_measurements_pair_time", "link_measurements", ["head_fingerprint", "worker_fingerprint", "address", "measured_at"])


def downgrade() -> None:
    op.drop_index("ix_link_measurements_pair_time", table_name="link_measurements")
    op.drop_table("link_measurements")
