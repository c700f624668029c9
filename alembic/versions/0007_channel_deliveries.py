"""channel deliveries: one row per push attempt to a channel's endpoint (issue 16, the delivery log)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_deliveries",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("channel_id", sa.Integer(), sa.ForeignKey("channels.id"), nullable=False),
        sa.Column("attempted_at", sa.DateTime(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("min_version", sa.BigInteger(), nullable=False),
        sa.Column("max_version", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("publisher", sa.String(128), nullable=False),
    )
    # an operator reads a channel's newest attempts first
    op.create_index("ix_channel_deliveries_channel_id_id", "channel_deliveries", ["channel_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_channel_deliveries_channel_id_id", table_name="channel_deliveries")
    op.drop_table("channel_deliveries")
