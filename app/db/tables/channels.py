"""The tables. Quantities live in `stock_levels`; every change to one is also a row in `inventory_events`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from app.db.types import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# --- tenants (issue 14) ---------------------------------------------------------------------------
# Every table below `tenants`, `sites` and `site_daily_orders` belongs to one tenant: `tenant_id` leads
# its primary key and every unique and foreign key (so each could be distributed by tenant with Citus,
# README "Tenants"), and row-level security shows a transaction only its tenant's rows (migration 0011,
# app/db/tenancy.py). The column fills itself from the transaction's tenant; a session that never set
# one (a superuser's direct SQL, as the benchmarks load data) writes into the default tenant.
TENANT_DEFAULT = "COALESCE(NULLIF(current_setting('stockwire.tenant_id', true), '')::int, 1)"


def tenant_key(root: bool = False) -> Column[int]:
    """`tenant_id`, first column of the primary key. `root`: a table no other tenant table's key
    reaches, which names `tenants` itself (the others get their tenant through a composite key)."""
    args: list[Any] = [ForeignKey("tenants.id")] if root else []
    return Column(
        "tenant_id", Integer, *args, primary_key=True, autoincrement=False, server_default=text(TENANT_DEFAULT)
    )


def tenant_fk(columns: list[str], table: str, referred: list[str]) -> ForeignKeyConstraint:
    """A foreign key within one tenant: (tenant_id, columns) -> table (tenant_id, referred)."""
    return ForeignKeyConstraint(["tenant_id", *columns], [f"{table}.tenant_id", *(f"{table}.{c}" for c in referred)])


tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(100), nullable=False, unique=True),
    Column("name", String(300), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, server_default=text("(now() AT TIME ZONE 'utc')")),
)

# Physical places several tenants may share (a 3PL's warehouse): not tenant data, a reference table.
# A tenant's location names its site; its positions stay its own. `daily_order_capacity` is the site's
# as a whole: routing counts every tenant's orders there against it (site_daily_orders).
sites = Table(
    "sites",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(100), nullable=False, unique=True),
    Column("name", String(300), nullable=False),
    Column("daily_order_capacity", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=text("(now() AT TIME ZONE 'utc')")),
)

site_daily_orders = Table(
    "site_daily_orders",
    metadata,
    Column("site_id", Integer, ForeignKey("sites.id"), primary_key=True),
    Column("day", String(10), primary_key=True),  # ISO date, UTC
    Column("orders", Integer, nullable=False, default=0),
)

skus = Table(
    "skus",
    metadata,
    tenant_key(root=True),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(100), nullable=False),
    Column("name", String(300), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    # bumped on every change of the SKU itself: part of Availability.version
    Column("version", BigInteger, nullable=False, default=1),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # preorders (migration 0008): before `launch_at` the SKU sells only as preorders against incoming
    # stock, at most `preorder_limit` units (NULL: none); `preordered` counts those sold and not given back
    Column("launch_at", UTCDateTime, nullable=True),
    Column("preorder_limit", Integer, nullable=True),
    Column("preordered", BigInteger, nullable=False, default=0, server_default="0"),
    CheckConstraint("preordered >= 0", name="preordered_not_negative"),
    UniqueConstraint("tenant_id", "code"),
)

locations = Table(
    "locations",
    metadata,
    tenant_key(root=True),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(100), nullable=False),
    Column("name", String(300), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("latitude", Float, nullable=True),
    Column("longitude", Float, nullable=True),
    Column("priority", Integer, nullable=False, default=100),
    Column("active", Boolean, nullable=False, default=True),
    # the source whose COUNTED events this location trusts; NULL: counts from every source apply
    Column("count_authority", String(100), nullable=True),
    # the physical site this location is part of, when it is shared with other tenants (a 3PL's warehouse)
    Column("site_id", Integer, ForeignKey("sites.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("tenant_id", "code"),
)

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
)

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

# --- routing (issue: order routing) ------------------------------------------------------------

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

# API keys (app/security/keys.py): only a SHA-256 of each key is stored; `prefix` is the public
# part of the key that finds its row and names it in listings and logs.
api_keys = Table(
    "api_keys",
    metadata,
    tenant_key(root=True),
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(20), nullable=False),
    Column("hash", String(64), nullable=False),
    # comma-separated scope names, sorted (app/security/scopes.py)
    Column("scopes", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    # refreshed at most once a minute per process, so it costs the hot path nothing
    Column("last_used_at", UTCDateTime, nullable=True),
    # a 3PL operator's key: the codes of the tenants it may act for (comma-separated, sorted), naming
    # one in every request; NULL: a key of its own tenant only
    Column("acts_for", Text, nullable=True),
    UniqueConstraint("tenant_id", "prefix"),
    # authentication finds a key by its prefix before it knows the tenant (in system mode)
    Index("ix_api_keys_prefix", "prefix"),
)

# Who created and who revoked each key (app/security/keys.py): `actor_key_id` is the admin key that did
# it over GraphQL, NULL when it was done from the command line (shell access is the proof there).
api_key_events = Table(
    "api_key_events",
    metadata,
    tenant_key(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key_id", String(36), nullable=False),
    Column("action", String(20), nullable=False),  # CREATED, REVOKED
    Column("actor_key_id", String(36), nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_api_key_events_key_id", "key_id"),
    tenant_fk(["key_id"], "api_keys", ["id"]),
)


# --- B2B (issue 19) ------------------------------------------------------------------------------

# Named packs a SKU is sold in (each, inner of 6, case of 12): `size` base units each.
sku_units = Table(
    "sku_units",
    metadata,
    tenant_key(),
    Column("sku_id", Integer, primary_key=True),
    Column("name", String(50), primary_key=True),
    Column("size", Integer, nullable=False),
    CheckConstraint("size >= 1", name="size_positive"),
    tenant_fk(["sku_id"], "skus", ["id"]),
)

# B2B buyer companies under a channel, each with an optional allocation applied after the channel's
# rules (app/domain/accounts.py): units ring-fenced for it, a cap, a share of the channel's figure.
accounts = Table(
    "accounts",
    metadata,
    tenant_key(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel_id", Integer, nullable=False),
    Column("code", String(100), nullable=False),
    Column("name", String(300), nullable=False),
    Column("ring_fenced_units", Integer, nullable=False, default=0, server_default="0"),
    Column("allocation_cap", Integer, nullable=True),
    Column("allocation_percent", Numeric(9, 4), nullable=True),
    Column("version", BigInteger, nullable=False, default=1, server_default="1"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    tenant_fk(["channel_id"], "channels", ["id"]),
    UniqueConstraint("tenant_id", "code"),
)

# The accounts a key serves: a sales rep's key (several), an account's own storefront key (one).
api_key_accounts = Table(
    "api_key_accounts",
    metadata,
    tenant_key(),
    Column("key_id", String(36), primary_key=True),
    Column("account_id", Integer, primary_key=True),
    tenant_fk(["key_id"], "api_keys", ["id"]),
    tenant_fk(["account_id"], "accounts", ["id"]),
)
