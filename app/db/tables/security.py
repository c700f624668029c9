"""API keys and the record of who created and revoked each."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from app.db.tables.base import metadata, tenant_fk, tenant_key
from app.db.types import UTCDateTime

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
