"""Sales channels: their rules and locations, ring-fences, holds, external holds, publications and
deliveries to their endpoints, and the demand and lag their dynamic buffers follow."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

# --- channels (issue: channels) ----------------------------------------------------------------

channels = Table(
    "channels",
    metadata,
    tenant_key(root=True),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(100), nullable=False),
    Column("name", String(300), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    # the rules, in the order app.domain.channel_rules applies them; percentages as exact decimals
    Column("safety_buffer_units", Integer, nullable=False, default=0),
    Column("safety_buffer_percent", Numeric(9, 4), nullable=True),
    Column("allocation_percent", Numeric(9, 4), nullable=True),
    Column("allocation_cap", Integer, nullable=True),
    Column("out_of_stock_threshold", Integer, nullable=False, default=0),
    Column("backorder_limit", Integer, nullable=True),
    # alerts: LOW_STOCK when the channel figure drops below this (NULL: none); migration 0004
    Column("low_stock_threshold", Integer, nullable=True),
    # comma-separated app.domain.routing.RoutingStrategy names; NULL: the default ranking
    Column("routing_ranking", String(200), nullable=True),
    # where changed availability is pushed (HMAC-SHA256 signed with endpoint_secret)
    Column("endpoint_url", Text, nullable=True),
    Column("endpoint_secret", Text, nullable=True),
    # the buffer that follows demand (migration 0008): clamp(ceil(velocity x lag x factor), min, max),
    # factor NULL: none; the lag is the longer of sync_lag_seconds (channels that poll) and the measured one
    Column("sync_lag_seconds", Float, nullable=True),
    Column("dynamic_buffer_factor", Numeric(9, 4), nullable=True),
    Column("dynamic_buffer_min", Integer, nullable=False, default=0, server_default="0"),
    Column("dynamic_buffer_max", Integer, nullable=True),
    Column("dynamic_buffer_band", Integer, nullable=False, default=1, server_default="1"),
    # bumped on every rule or location-link change: part of the channel's Availability.version
    Column("version", BigInteger, nullable=False, default=1),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("tenant_id", "code"),
)

channel_locations = Table(
    "channel_locations",
    metadata,
    tenant_key(),
    Column("channel_id", Integer, primary_key=True),
    Column("location_id", Integer, primary_key=True),
    tenant_fk(["channel_id"], "channels", ["id"]),
    tenant_fk(["location_id"], "locations", ["id"]),
)

# Units at a location kept exclusively for one channel: invisible to every other channel.
ring_fences = Table(
    "ring_fences",
    metadata,
    tenant_key(),
    Column("channel_id", Integer, primary_key=True),
    Column("sku_id", Integer, primary_key=True),
    Column("location_id", Integer, primary_key=True),
    Column("units", BigInteger, nullable=False),
    CheckConstraint("units >= 0", name="units_not_negative"),
    tenant_fk(["channel_id"], "channels", ["id"]),
    tenant_fk(["sku_id"], "skus", ["id"]),
    tenant_fk(["location_id"], "locations", ["id"]),
)

# One row per (channel, SKU) that has ever held stock: what the channel holds now, and the row every
# reserve under that channel updates, so concurrent reserves of one SKU on one channel queue on its
# lock and the channel's cap or share is enforced against committed truth.
channel_holds = Table(
    "channel_holds",
    metadata,
    tenant_key(),
    Column("channel_id", Integer, primary_key=True),
    Column("sku_id", Integer, primary_key=True),
    Column("reserved", BigInteger, nullable=False, default=0),
    Column("backordered", BigInteger, nullable=False, default=0),
    Column("version", BigInteger, nullable=False, default=0),
    CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    CheckConstraint("backordered >= 0", name="backordered_not_negative"),
    tenant_fk(["channel_id"], "channels", ["id"]),
    tenant_fk(["sku_id"], "skus", ["id"]),
)

# Checkouts in progress on other platforms, counted in `reserved` at their location until released,
# converted to an order (committed) or expired.
external_holds = Table(
    "external_holds",
    metadata,
    tenant_key(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("sku_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("channel_code", String(100), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("tenant_id", "source", "external_id"),
    Index("ix_external_holds_status_expires_at", "status", "expires_at"),
    tenant_fk(["sku_id"], "skus", ["id"]),
    tenant_fk(["location_id"], "locations", ["id"]),
)

# What each channel endpoint was last told and acknowledged, per SKU.
channel_publications = Table(
    "channel_publications",
    metadata,
    tenant_key(),
    Column("channel_id", Integer, primary_key=True),
    Column("sku_id", Integer, primary_key=True),
    Column("acked_version", BigInteger, nullable=True),
    Column("acked_available", BigInteger, nullable=True),
    Column("acked_at", UTCDateTime, nullable=True),
    Column("pending_version", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    tenant_fk(["channel_id"], "channels", ["id"]),
    tenant_fk(["sku_id"], "skus", ["id"]),
)

# one row per push attempt to a channel's endpoint: the delivery log an operator reads (issue 16)
channel_deliveries = Table(
    "channel_deliveries",
    metadata,
    tenant_key(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("channel_id", Integer, nullable=False),
    Column("attempted_at", UTCDateTime, nullable=False),
    Column("items", Integer, nullable=False),
    Column("min_version", BigInteger, nullable=False),
    Column("max_version", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # DELIVERED or FAILED
    Column("latency_ms", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("publisher", String(128), nullable=False),  # host:pid of the process that pushed
    Index("ix_channel_deliveries_channel_id_id", "channel_id", "id"),
    tenant_fk(["channel_id"], "channels", ["id"]),
)

# --- demand (issue 18: buffers that follow demand) ------------------------------------------------

# Sales velocity per SKU and channel ('' : sales under no channel): a count of units sold, each weighted
# by 2^(-age / half-life), as of `last_at`. One upsert per sale in the sale's own transaction keeps it
# current; readers decay it with the clock (app.domain.demand).
sku_demand = Table(
    "sku_demand",
    metadata,
    tenant_key(),
    Column("sku_id", Integer, primary_key=True),
    Column("channel_code", String(100), primary_key=True),
    Column("units", Float, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
    tenant_fk(["sku_id"], "skus", ["id"]),
)

# Per channel: the measured push -> acknowledgement lag (an EWMA over samples), and since when a push
# has been waiting for an acknowledgement (failed attempts count toward the next sample).
channel_sync_lag = Table(
    "channel_sync_lag",
    metadata,
    tenant_key(),
    Column("channel_id", Integer, primary_key=True),
    Column("measured_seconds", Float, nullable=True),
    Column("samples", BigInteger, nullable=False, default=0),
    Column("waiting_since", UTCDateTime, nullable=True),
    Column("measured_at", UTCDateTime, nullable=True),
    tenant_fk(["channel_id"], "channels", ["id"]),
)

# The dynamic buffer applied per (channel, SKU): moved with hysteresis in the transactions that change
# demand or lag, and when decay alone should lower it (`review_at`, by the sweeper). `version` is part of
# the channel's Availability.version: the figure never changes without it.
dynamic_buffers = Table(
    "dynamic_buffers",
    metadata,
    tenant_key(),
    Column("channel_id", Integer, primary_key=True),
    Column("sku_id", Integer, primary_key=True),
    Column("applied", Integer, nullable=False),
    Column("target", Integer, nullable=False),
    Column("version", BigInteger, nullable=False, default=1),
    Column("review_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("applied >= 0", name="applied_not_negative"),
    Index("ix_dynamic_buffers_review_at", "review_at"),
    tenant_fk(["channel_id"], "channels", ["id"]),
    tenant_fk(["sku_id"], "skus", ["id"]),
)
