"""channels and routing

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:18:40.340927
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"  # after the api_keys table (0002, the security issue)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("safety_buffer_units", sa.Integer(), nullable=False),
        sa.Column("safety_buffer_percent", sa.Numeric(precision=9, scale=4), nullable=True),
        sa.Column("allocation_percent", sa.Numeric(precision=9, scale=4), nullable=True),
        sa.Column("allocation_cap", sa.Integer(), nullable=True),
        sa.Column("out_of_stock_threshold", sa.Integer(), nullable=False),
        sa.Column("backorder_limit", sa.Integer(), nullable=True),
        sa.Column("routing_ranking", sa.String(length=200), nullable=True),
        sa.Column("endpoint_url", sa.Text(), nullable=True),
        sa.Column("endpoint_secret", sa.Text(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("code", name=op.f("uq_channels_code")),
    )
    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("order_ref", sa.String(length=200), nullable=False),
        sa.Column("channel_code", sa.String(length=100), nullable=True),
        sa.Column("reservation_id", sa.String(length=36), nullable=True),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_decisions")),
    )
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.create_index("ix_routing_decisions_order_ref", ["order_ref"], unique=False)

    op.create_table(
        "channel_holds",
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("backordered", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("backordered >= 0", name=op.f("ck_channel_holds_backordered_not_negative")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_channel_holds_reserved_not_negative")),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name=op.f("fk_channel_holds_channel_id_channels")),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_channel_holds_sku_id_skus")),
        sa.PrimaryKeyConstraint("channel_id", "sku_id", name=op.f("pk_channel_holds")),
    )
    op.create_table(
        "channel_locations",
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name=op.f("fk_channel_locations_channel_id_channels")),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_channel_locations_location_id_locations")
        ),
        sa.PrimaryKeyConstraint("channel_id", "location_id", name=op.f("pk_channel_locations")),
    )
    op.create_table(
        "channel_publications",
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("acked_version", sa.BigInteger(), nullable=True),
        sa.Column("acked_available", sa.BigInteger(), nullable=True),
        sa.Column("acked_at", sa.DateTime(), nullable=True),
        sa.Column("pending_version", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_channel_publications_channel_id_channels")
        ),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_channel_publications_sku_id_skus")),
        sa.PrimaryKeyConstraint("channel_id", "sku_id", name=op.f("pk_channel_publications")),
    )
    op.create_table(
        "external_holds",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("channel_code", sa.String(length=100), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_external_holds_location_id_locations")
        ),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_external_holds_sku_id_skus")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_holds")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_external_holds_source_external_id")),
    )
    with op.batch_alter_table("external_holds", schema=None) as batch_op:
        batch_op.create_index("ix_external_holds_status_expires_at", ["status", "expires_at"], unique=False)

    op.create_table(
        "location_daily_orders",
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_location_daily_orders_location_id_locations")
        ),
        sa.PrimaryKeyConstraint("location_id", "day", name=op.f("pk_location_daily_orders")),
    )
    op.create_table(
        "location_routing",
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("daily_order_capacity", sa.Integer(), nullable=True),
        sa.Column("shipping_cost", sa.Numeric(precision=12, scale=4), nullable=True),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_location_routing_location_id_locations")
        ),
        sa.PrimaryKeyConstraint("location_id", name=op.f("pk_location_routing")),
    )
    op.create_table(
        "ring_fences",
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("units >= 0", name=op.f("ck_ring_fences_units_not_negative")),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name=op.f("fk_ring_fences_channel_id_channels")),
        sa.ForeignKeyConstraint(["location_id"], ["locations.id"], name=op.f("fk_ring_fences_location_id_locations")),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_ring_fences_sku_id_skus")),
        sa.PrimaryKeyConstraint("channel_id", "sku_id", "location_id", name=op.f("pk_ring_fences")),
    )
    with op.batch_alter_table("reservation_lines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backordered", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.drop_constraint("quantity_positive", type_="check")
        batch_op.create_check_constraint("quantity_not_negative", "quantity >= 0")
        batch_op.create_check_constraint("backordered_not_negative", "backordered >= 0")
        batch_op.create_check_constraint("holds_something", "quantity + backordered > 0")


def downgrade() -> None:
    with op.batch_alter_table("reservation_lines", schema=None) as batch_op:
        batch_op.drop_column("backordered")

    op.drop_table("ring_fences")
    op.drop_table("location_routing")
    op.drop_table("location_daily_orders")
    with op.batch_alter_table("external_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_external_holds_status_expires_at")

    op.drop_table("external_holds")
    op.drop_table("channel_publications")
    op.drop_table("channel_locations")
    op.drop_table("channel_holds")
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_routing_decisions_order_ref")

    op.drop_table("routing_decisions")
    op.drop_table("channels")
