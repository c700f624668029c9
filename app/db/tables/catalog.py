"""Tenants, shared sites, SKUs, their sell units and locations: what stock is of and where it is."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    UniqueConstraint,
    text,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

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
