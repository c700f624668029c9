"""backorders stay counted until their stock arrives

`stock_levels.backordered`: units promised against the position's incoming stock (by reservations in
any state) that have not arrived; never more than `incoming` (a constraint, so no write can promise
more than is expected). `reservation_lines.backorder_open`: the line's backordered units still waiting
for stock; `reservation_lines.expected_at`: the arrival they were promised against.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reservation_lines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backorder_open", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("expected_at", sa.DateTime(), nullable=True))
        batch_op.create_check_constraint(
            "backorder_open_within_backordered", "backorder_open >= 0 AND backorder_open <= backordered"
        )
    # what was counted before (backorders of ACTIVE reservations) stays counted
    op.execute(
        "UPDATE reservation_lines SET backorder_open = backordered WHERE reservation_id IN "
        "(SELECT id FROM reservations WHERE status = 'ACTIVE')"
    )
    with op.batch_alter_table("stock_levels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backordered", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE stock_levels SET backordered = (SELECT COALESCE(SUM(rl.backorder_open), 0) FROM reservation_lines rl "
        "WHERE rl.sku_id = stock_levels.sku_id AND rl.location_id = stock_levels.location_id)"
    )
    # promises beyond what is still expected (made before this revision) are capped at it
    op.execute("UPDATE stock_levels SET backordered = incoming WHERE backordered > incoming")
    with op.batch_alter_table("stock_levels", schema=None) as batch_op:
        batch_op.create_check_constraint("backordered_within_incoming", "backordered >= 0 AND backordered <= incoming")


def downgrade() -> None:
    with op.batch_alter_table("stock_levels", schema=None) as batch_op:
        batch_op.drop_constraint("backordered_within_incoming", type_="check")
        batch_op.drop_column("backordered")
    with op.batch_alter_table("reservation_lines", schema=None) as batch_op:
        batch_op.drop_constraint("backorder_open_within_backordered", type_="check")
        batch_op.drop_column("expected_at")
        batch_op.drop_column("backorder_open")
