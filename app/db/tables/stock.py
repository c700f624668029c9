"""Stock positions and their ledger: quantities live in `stock_levels`; every change to one is also a row in
`inventory_events`, and is announced through `outbox`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

# Named monotonic counters; "locations" moves whenever any location changes, which moves every
# Availability.version (a location switched off changes every SKU's figure).
counters = Table(
    "counters",
    metadata,
    tenant_key(root=True),
    Column("name", String(50), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

stock_levels = Table(
    "stock_levels",
    metadata,
    tenant_key(),
    Column("sku_id", Integer, primary_key=True),
    Column("location_id", Integer, primary_key=True),
    Column("on_hand", BigInteger, nullable=False, default=0),
    Column("committed", BigInteger, nullable=False, default=0),
    Column("reserved", BigInteger, nullable=False, default=0),
    Column("unavailable", BigInteger, nullable=False, default=0),
    Column("safety_stock", BigInteger, nullable=False, default=0),
    Column("incoming", BigInteger, nullable=False, default=0),
    Column("version", BigInteger, nullable=False, default=0),
    # when the last applied COUNTED occurred: older deltas arriving later are SUPERSEDED
    Column("counted_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # units promised against `incoming` by reservations in any state (backorders) and not arrived yet:
    # not one of the contract's quantities (no ledger row, no version), but never more than is expected
    Column("backordered", BigInteger, nullable=False, default=0, server_default="0"),
    # The last line of defence: whatever the code does, these can never go below zero.
    CheckConstraint("committed >= 0", name="committed_not_negative"),
    CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    CheckConstraint("unavailable >= 0", name="unavailable_not_negative"),
    CheckConstraint("incoming >= 0", name="incoming_not_negative"),
    CheckConstraint("safety_stock >= 0", name="safety_stock_not_negative"),
    # no write can promise more units against incoming stock than are expected (migration 0005)
    CheckConstraint("backordered >= 0 AND backordered <= incoming", name="backordered_within_incoming"),
    Index("ix_stock_levels_location_id", "location_id"),
    tenant_fk(["sku_id"], "skus", ["id"]),
    tenant_fk(["location_id"], "locations", ["id"]),
)

# a ledger row that changes a quantity (the others record what happened and keep the version they saw)
LEDGER_ROW_CHANGES = (
    "d_on_hand <> 0 OR d_committed <> 0 OR d_reserved <> 0 OR d_unavailable <> 0 "
    "OR d_safety_stock <> 0 OR d_incoming <> 0"
)

inventory_events = Table(
    "inventory_events",
    metadata,
    tenant_key(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    # NULL for movements Stockwire makes itself (reservations, the far side of a transfer)
    Column("external_id", String(200), nullable=True),
    Column("kind", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("sku_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=True),
    Column("reference", Text, nullable=True),
    Column("to_location_id", Integer, nullable=True),
    Column("expected_at", UTCDateTime, nullable=True),
    Column("reservation_id", String(36), nullable=True),
    Column("fingerprint", String(64), nullable=True),
    # the API key that recorded the row (its id, never the secret); NULL: Stockwire itself (the expiry
    # sweeper) or a row older than migration 0005
    Column("actor_key_id", String(36), nullable=True),
    # the sell unit the event was reported in (issue 19); quantities are stored in base units
    Column("unit", String(50), nullable=True),
    # what the row did to the position: the position is the sum of these over its ledger
    Column("d_on_hand", BigInteger, nullable=False, default=0),
    Column("d_committed", BigInteger, nullable=False, default=0),
    Column("d_reserved", BigInteger, nullable=False, default=0),
    Column("d_unavailable", BigInteger, nullable=False, default=0),
    Column("d_safety_stock", BigInteger, nullable=False, default=0),
    Column("d_incoming", BigInteger, nullable=False, default=0),
    # units asked to be removed that were not there (clipped at 0): reported as drift
    Column("drift", BigInteger, nullable=False, default=0),
    # the position's version after this row
    Column("version", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "source", "external_id"),
    Index("ix_inventory_events_position", "sku_id", "location_id", "occurred_at"),
    Index("ix_inventory_events_location_id", "location_id"),
    Index("ix_inventory_events_reservation_id", "reservation_id"),
    # one row per change of a position at each version (rows that change nothing keep the version they
    # saw); a deferred trigger also requires a row for every version reached (migration 0009)
    Index(
        "ux_inventory_events_position_version",
        "tenant_id",
        "sku_id",
        "location_id",
        "version",
        unique=True,
        postgresql_where=text(LEDGER_ROW_CHANGES),
    ),
    tenant_fk(["sku_id"], "skus", ["id"]),
    tenant_fk(["location_id"], "locations", ["id"]),
    tenant_fk(["to_location_id"], "locations", ["id"]),
)

# Transactional outbox: written in the same transaction as the change, relayed after commit.
outbox = Table(
    "outbox",
    metadata,
    tenant_key(root=True),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("sku_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # the relays claim the oldest rows of every tenant (in system mode)
    Index("ix_outbox_id", "id"),
    # and the rows of the positions a commit named (pg._CLAIM_AND_READ probes it per position)
    Index("ix_outbox_position", "tenant_id", "sku_id", "location_id"),
)
