"""buffers that follow demand, and preorders (issue 18)

Channels get a dynamic buffer rule (`dynamic_buffer_factor`, `_min`, `_max`, `_band`) and a configured
`sync_lag_seconds`; `channel_sync_lag` keeps the measured push -> acknowledgement lag; `sku_demand`
keeps the sales velocity per SKU and channel as a decayed count; `dynamic_buffers` the buffer applied
per (channel, SKU). SKUs get a launch date and a preorder limit; reservation lines say how many of
their backordered units are preorders.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("channels", sa.Column("sync_lag_seconds", sa.Float(), nullable=True))
    op.add_column("channels", sa.Column("dynamic_buffer_factor", sa.Numeric(9, 4), nullable=True))
    op.add_column("channels", sa.Column("dynamic_buffer_min", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("channels", sa.Column("dynamic_buffer_max", sa.Integer(), nullable=True))
    op.add_column("channels", sa.Column("dynamic_buffer_band", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("skus", sa.Column("launch_at", sa.DateTime(), nullable=True))
    op.add_column("skus", sa.Column("preorder_limit", sa.Integer(), nullable=True))
    op.add_column("skus", sa.Column("preordered", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_check_constraint("preordered_not_negative", "skus", "preordered >= 0")
    op.add_column("reservation_lines", sa.Column("preordered", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_check_constraint("preordered_not_negative", "reservation_lines", "preordered >= 0")
    op.create_table(
        "sku_demand",
        sa.Column("sku_id", sa.Integer(), sa.ForeignKey("skus.id"), nullable=False),
        sa.Column("channel_code", sa.String(100), nullable=False),
        sa.Column("units", sa.Float(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sku_id", "channel_code"),
    )
    op.create_table(
        "channel_sync_lag",
        sa.Column(
            "channel_id",
            sa.Integer(),
            sa.ForeignKey("channels.id"),
            nullable=False,
        ),
        sa.Column("measured_seconds", sa.Float(), nullable=True),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("waiting_since", sa.DateTime(), nullable=True),
        sa.Column("measured_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("channel_id"),
    )
    op.create_table(
        "dynamic_buffers",
        sa.Column(
            "channel_id",
            sa.Integer(),
            sa.ForeignKey("channels.id"),
            nullable=False,
        ),
        sa.Column("sku_id", sa.Integer(), sa.ForeignKey("skus.id"), nullable=False),
        sa.Column("applied", sa.Integer(), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("review_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("applied >= 0", name="applied_not_negative"),
        sa.PrimaryKeyConstraint("channel_id", "sku_id"),
    )
    op.create_index("ix_dynamic_buffers_review_at", "dynamic_buffers", ["review_at"])


def downgrade() -> None:
    op.drop_index("ix_dynamic_buffers_review_at", table_name="dynamic_buffers")
    op.drop_table("dynamic_buffers")
    op.drop_table("channel_sync_lag")
    op.drop_table("sku_demand")
    op.drop_constraint("preordered_not_negative", "reservation_lines", type_="check")
    op.drop_column("reservation_lines", "preordered")
    op.drop_constraint("preordered_not_negative", "skus", type_="check")
    for column in ("preordered", "preorder_limit", "launch_at"):
        op.drop_column("skus", column)
    for column in ("dynamic_buffer_band", "dynamic_buffer_max", "dynamic_buffer_min", "dynamic_buffer_factor"):
        op.drop_column("channels", column)
    op.drop_column("channels", "sync_lag_seconds")
