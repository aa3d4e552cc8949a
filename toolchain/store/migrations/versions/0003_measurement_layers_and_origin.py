"""Device measurements say how many layers and matrix rows the measured model had (the fixed
per-token cost is fitted per layer and per row) and where they come from: a shipped run, or the
first-contact calibration.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device_measurements") as batch:  # batch: SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("n_layer", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("rows_per_token", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("origin", sa.String(20), nullable=False, server_default="run"))


def downgrade() -> None:
    with op.batch_alter_table("device_measurements") as batch:
        batch.drop_column("origin")
        batch.drop_column("rows_per_token")
        batch.drop_column("n_layer")
