"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 09:42:18.505712
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
    )
    op.create_table(
        "locations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("count_authority", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_locations")),
        sa.UniqueConstraint("code", name=op.f("uq_locations_code")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("idempotency_scope", sa.String(length=100), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("channel_code", sa.String(length=100), nullable=True),
        sa.Column("cart_ref", sa.String(length=200), nullable=True),
        sa.Column("order_ref", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
        sa.UniqueConstraint(
            "idempotency_scope",
            "idempotency_key",
            name=op.f("uq_reservations_idempotency_scope_idempotency_key"),
        ),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_cart_ref", ["cart_ref"], unique=False)
        batch_op.create_index("ix_reservations_status_expires_at", ["status", "expires_at"], unique=False)

    op.create_table(
        "skus",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_skus")),
        sa.UniqueConstraint("code", name=op.f("uq_skus_code")),
    )
    op.create_table(
        "inventory_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("to_location_id", sa.Integer(), nullable=True),
        sa.Column("expected_at", sa.DateTime(), nullable=True),
        sa.Column("reservation_id", sa.String(length=36), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("d_on_hand", sa.BigInteger(), nullable=False),
        sa.Column("d_committed", sa.BigInteger(), nullable=False),
        sa.Column("d_reserved", sa.BigInteger(), nullable=False),
        sa.Column("d_unavailable", sa.BigInteger(), nullable=False),
        sa.Column("d_safety_stock", sa.BigInteger(), nullable=False),
        sa.Column("d_incoming", sa.BigInteger(), nullable=False),
        sa.Column("drift", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_inventory_events_location_id_locations")
        ),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_inventory_events_sku_id_skus")),
        sa.ForeignKeyConstraint(
            ["to_location_id"], ["locations.id"], name=op.f("fk_inventory_events_to_location_id_locations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_events")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_inventory_events_source_external_id")),
    )
    with op.batch_alter_table("inventory_events", schema=None) as batch_op:
        batch_op.create_index("ix_inventory_events_location_id", ["location_id"], unique=False)
        batch_op.create_index("ix_inventory_events_position", ["sku_id", "location_id", "occurred_at"], unique=False)
        batch_op.create_index("ix_inventory_events_reservation_id", ["reservation_id"], unique=False)

    op.create_table(
        "reservation_lines",
        sa.Column("reservation_id", sa.String(length=36), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_reservation_lines_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_reservation_lines_location_id_locations")
        ),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
            name=op.f("fk_reservation_lines_reservation_id_reservations"),
        ),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_reservation_lines_sku_id_skus")),
        sa.PrimaryKeyConstraint("reservation_id", "sku_id", "location_id", name=op.f("pk_reservation_lines")),
    )
    with op.batch_alter_table("reservation_lines", schema=None) as batch_op:
        batch_op.create_index("ix_reservation_lines_sku_id", ["sku_id"], unique=False)

    op.create_table(
        "stock_levels",
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=False),
        sa.Column("committed", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("unavailable", sa.BigInteger(), nullable=False),
        sa.Column("safety_stock", sa.BigInteger(), nullable=False),
        sa.Column("incoming", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("counted_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("committed >= 0", name=op.f("ck_stock_levels_committed_not_negative")),
        sa.CheckConstraint("incoming >= 0", name=op.f("ck_stock_levels_incoming_not_negative")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_stock_levels_reserved_not_negative")),
        sa.CheckConstraint("safety_stock >= 0", name=op.f("ck_stock_levels_safety_stock_not_negative")),
        sa.CheckConstraint("unavailable >= 0", name=op.f("ck_stock_levels_unavailable_not_negative")),
        sa.ForeignKeyConstraint(["location_id"], ["locations.id"], name=op.f("fk_stock_levels_location_id_locations")),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_stock_levels_sku_id_skus")),
        sa.PrimaryKeyConstraint("sku_id", "location_id", name=op.f("pk_stock_levels")),
    )
    with op.batch_alter_table("stock_levels", schema=None) as batch_op:
        batch_op.create_index("ix_stock_levels_location_id", ["location_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stock_levels", schema=None) as batch_op:
        batch_op.drop_index("ix_stock_levels_location_id")

    op.drop_table("stock_levels")
    with op.batch_alter_table("reservation_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_reservation_lines_sku_id")

    op.drop_table("reservation_lines")
    with op.batch_alter_table("inventory_events", schema=None) as batch_op:
        batch_op.drop_index("ix_inventory_events_reservation_id")
        batch_op.drop_index("ix_inventory_events_position")
        batch_op.drop_index("ix_inventory_events_location_id")

    op.drop_table("inventory_events")
    op.drop_table("skus")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_status_expires_at")
        batch_op.drop_index("ix_reservations_cart_ref")

    op.drop_table("reservations")
    op.drop_table("outbox")
    op.drop_table("locations")
    op.drop_table("counters")
