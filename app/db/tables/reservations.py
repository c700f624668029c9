"""Reservations and their lines: units held for a cart or an order until committed, released or expired."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

reservations = Table(
    "reservations",
    metadata,
    tenant_key(root=True),
    Column("id", String(36), primary_key=True),
    Column("status", String(20), nullable=False),
    # who the idempotency key belongs to ('' until API keys exist)
    Column("idempotency_scope", String(100), nullable=False, default=""),
    Column("idempotency_key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("channel_code", String(100), nullable=True),
    Column("cart_ref", String(200), nullable=True),
    Column("order_ref", String(200), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    # the API key that made it: only that key (or an admin) may read, list, extend, commit or release it;
    # NULL: made without a key (by a service call, not over the API): an admin's only
    Column("owner_key_id", String(36), nullable=True),
    # the B2B account the hold was made for (issue 19): it counts against that account's allocation
    Column("account_code", String(100), nullable=True),
    Index("ix_reservations_account_code_status", "account_code", "status"),
    UniqueConstraint("tenant_id", "idempotency_scope", "idempotency_key"),
    Index("ix_reservations_status_expires_at", "status", "expires_at"),
    Index("ix_reservations_cart_ref", "cart_ref"),
    Index("ix_reservations_owner_key_id_cart_ref", "owner_key_id", "cart_ref"),
)

reservation_lines = Table(
    "reservation_lines",
    metadata,
    tenant_key(),
    Column("reservation_id", String(36), primary_key=True),
    Column("sku_id", Integer, primary_key=True),
    Column("location_id", Integer, primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    # units taken under a channel's backorder allowance (against incoming): not in stock_levels.reserved
    Column("backordered", BigInteger, nullable=False, default=0),
    # of `backordered`, the units still waiting for stock to arrive (0 once covered, released or expired)
    Column("backorder_open", BigInteger, nullable=False, default=0, server_default="0"),
    # the expected arrival the backordered units were promised against
    Column("expected_at", UTCDateTime, nullable=True),
    # units of this line sold as preorders before the SKU's launch (migration 0008); they were
    # backordered when sold, and stay preorders after their stock arrives and `backordered` falls
    Column("preordered", BigInteger, nullable=False, default=0, server_default="0"),
    CheckConstraint("preordered >= 0", name="preordered_not_negative"),
    CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    CheckConstraint("backorder_open >= 0 AND backorder_open <= backordered", name="backorder_open_within_backordered"),
    CheckConstraint("backordered >= 0", name="backordered_not_negative"),
    CheckConstraint("quantity + backordered > 0", name="holds_something"),
    Index("ix_reservation_lines_sku_id", "sku_id"),
    tenant_fk(["reservation_id"], "reservations", ["id"]),
    tenant_fk(["sku_id"], "skus", ["id"]),
    tenant_fk(["location_id"], "locations", ["id"]),
)
