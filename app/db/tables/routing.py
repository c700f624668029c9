"""Order routing: per-location capacity and cost, the orders counted per day, and the decisions made."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

location_routing = Table(
    "location_routing",
    metadata,
    tenant_key(),
    Column("location_id", Integer, primary_key=True),
    Column("daily_order_capacity", Integer, nullable=True),
    Column("shipping_cost", Numeric(12, 4), nullable=True),
    tenant_fk(["location_id"], "locations", ["id"]),
)

location_daily_orders = Table(
    "location_daily_orders",
    metadata,
    tenant_key(),
    Column("location_id", Integer, primary_key=True),
    Column("day", String(10), primary_key=True),  # ISO date, UTC
    Column("orders", Integer, nullable=False, default=0),
    tenant_fk(["location_id"], "locations", ["id"]),
)

routing_decisions = Table(
    "routing_decisions",
    metadata,
    tenant_key(root=True),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("order_ref", String(200), nullable=False),
    Column("channel_code", String(100), nullable=True),
    Column("reservation_id", String(36), nullable=True),
    Column("request", Text, nullable=False),  # JSON: the inputs, including candidate stock as seen
    Column("decision", Text, nullable=False),  # JSON: shipments, scores, reason
    Column("created_at", UTCDateTime, nullable=False),
    # the API key that asked for it (as reservations.owner_key_id): others do not see it
    Column("owner_key_id", String(36), nullable=True),
    Index("ix_routing_decisions_order_ref", "order_ref"),
)
