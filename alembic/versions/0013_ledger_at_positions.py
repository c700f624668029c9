"""A ledger row names its position: one foreign key to stock_levels instead of one to skus and one to locations.

Every ledger row is at a position (a SKU at a location), and every path that writes one holds that
position's row lock (positions are never deleted). Checked per row, the two keys cost an ingested batch
of 500 events 8-13 ms of Postgres time inside its row locks (EXPLAIN ANALYZE on bench/ingest.py's
catalogue: the triggers of the SKU and the location keys), and every batch shares the one hot location
row's key-share lock with the others in flight. One key to the position says more (the position exists,
so its SKU and its location do: stock_levels has those keys) and costs one check of a row this
transaction has already locked. The reservation index holds only the rows of reservations: an
ingested event (no reservation) no longer adds a NULL entry to it.

Revision ID: 0013_ledger_at_positions
Revises: 0012_outbox_positions
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013_ledger_at_positions"
down_revision: str | None = "0012_outbox_positions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # validated against the rows already there: a ledger row without its position stops the upgrade
    op.create_foreign_key(
        "fk_inventory_events_tenant_id_stock_levels",
        "inventory_events",
        "stock_levels",
        ["tenant_id", "sku_id", "location_id"],
        ["tenant_id", "sku_id", "location_id"],
    )
    op.drop_constraint("fk_inventory_events_sku_id_skus", "inventory_events", type_="foreignkey")
    op.drop_constraint("fk_inventory_events_location_id_locations", "inventory_events", type_="foreignkey")
    op.drop_index("ix_inventory_events_reservation_id", "inventory_events")
    op.create_index(
        "ix_inventory_events_reservation_id",
        "inventory_events",
        ["reservation_id"],
        postgresql_where=sa.text("reservation_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_inventory_events_reservation_id", "inventory_events")
    op.create_index("ix_inventory_events_reservation_id", "inventory_events", ["reservation_id"])
    op.create_foreign_key(
        "fk_inventory_events_sku_id_skus", "inventory_events", "skus", ["tenant_id", "sku_id"], ["tenant_id", "id"]
    )
    op.create_foreign_key(
        "fk_inventory_events_location_id_locations",
        "inventory_events",
        "locations",
        ["tenant_id", "location_id"],
        ["tenant_id", "id"],
    )
    op.drop_constraint("fk_inventory_events_tenant_id_stock_levels", "inventory_events", type_="foreignkey")
