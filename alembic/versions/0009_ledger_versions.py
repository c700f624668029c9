"""versions without gaps: one ledger row per change of a position, at exactly the version it made

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 10:00:00

Every change of a position bumps its version by 1 and writes one ledger row carrying the version
after it; clients detect a missed change by a gap. Two rules, held by the database whatever a code
path does:
- a ledger row that changes a quantity holds a version no other such row of its position holds
  (a unique index: a stale version collides);
- on PostgreSQL, every version a position reaches has such a row when the transaction commits
  (a deferred constraint trigger: a bump without its row, e.g. two holds of one position recorded
  as one row, fails the commit instead of leaving a gap).
Rows that change nothing (FLAGGED counts, fully superseded events, drift only) keep the version
they saw and are outside both rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANGES = (
    "d_on_hand <> 0 OR d_committed <> 0 OR d_reserved <> 0 OR d_unavailable <> 0 "
    "OR d_safety_stock <> 0 OR d_incoming <> 0"
)

_CHECK_FUNCTION = f"""
CREATE FUNCTION stock_version_has_ledger_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM inventory_events
        WHERE sku_id = NEW.sku_id AND location_id = NEW.location_id AND version = NEW.version
          AND ({CHANGES})
    ) THEN
        RAISE EXCEPTION 'position (sku %, location %) reached version % without a ledger row for it',
            NEW.sku_id, NEW.location_id, NEW.version
            USING ERRCODE = 'check_violation', CONSTRAINT = 'stock_version_has_ledger_row';
    END IF;
    RETURN NULL;
END
$$
"""

_CHECK_TRIGGER = """
CREATE CONSTRAINT TRIGGER stock_version_has_ledger_row
AFTER UPDATE OF version ON stock_levels
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW WHEN (NEW.version IS DISTINCT FROM OLD.version)
EXECUTE FUNCTION stock_version_has_ledger_row()
"""


def upgrade() -> None:
    op.create_index(
        "ux_inventory_events_position_version",
        "inventory_events",
        ["sku_id", "location_id", "version"],
        unique=True,
        postgresql_where=sa.text(CHANGES),
    )
    op.execute(_CHECK_FUNCTION)
    op.execute(_CHECK_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS stock_version_has_ledger_row ON stock_levels")
    op.execute("DROP FUNCTION IF EXISTS stock_version_has_ledger_row()")
    op.drop_index("ux_inventory_events_position_version", table_name="inventory_events")
