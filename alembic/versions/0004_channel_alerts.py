"""channel alerts: a low-stock threshold per channel

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: no LOW_STOCK alerts for the channel (out of stock / back in stock are always reported)
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("low_stock_threshold", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.drop_column("low_stock_threshold")
