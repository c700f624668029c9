"""The tables, one module per aggregate, all on the one `metadata` of `base`. Importing this package
defines every table; every name stays importable from here (`from app.db.tables import metadata, skus`)."""

# isort: off
# In the order the tables refer to each other (a module names only its own tables and those of the modules
# above it), so every foreign key meets a table already defined; ruff must not sort them alphabetically.
from app.db.tables.base import metadata, TENANT_DEFAULT, tenant_key, tenant_fk
from app.db.tables.catalog import tenants, sites, site_daily_orders, skus, locations, sku_units
from app.db.tables.stock import counters, stock_levels, LEDGER_ROW_CHANGES, inventory_events, outbox
from app.db.tables.reservations import reservations, reservation_lines
from app.db.tables.channels import (
    channels,
    channel_locations,
    ring_fences,
    channel_holds,
    external_holds,
    channel_publications,
    channel_deliveries,
    sku_demand,
    channel_sync_lag,
    dynamic_buffers,
)
from app.db.tables.routing import location_routing, location_daily_orders, routing_decisions
from app.db.tables.security import api_keys, api_key_events
from app.db.tables.accounts import accounts, api_key_accounts
# isort: on

__all__ = [
    "LEDGER_ROW_CHANGES",
    "TENANT_DEFAULT",
    "accounts",
    "api_key_accounts",
    "api_key_events",
    "api_keys",
    "channel_deliveries",
    "channel_holds",
    "channel_locations",
    "channel_publications",
    "channel_sync_lag",
    "channels",
    "counters",
    "dynamic_buffers",
    "external_holds",
    "inventory_events",
    "location_daily_orders",
    "location_routing",
    "locations",
    "metadata",
    "outbox",
    "reservation_lines",
    "reservations",
    "ring_fences",
    "routing_decisions",
    "site_daily_orders",
    "sites",
    "sku_demand",
    "sku_units",
    "skus",
    "stock_levels",
    "tenant_fk",
    "tenant_key",
    "tenants",
]
