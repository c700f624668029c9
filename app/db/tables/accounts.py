"""B2B accounts under a channel and the API keys that serve them (issue 19)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    Numeric,
    String,
    Table,
    UniqueConstraint,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

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
