"""API keys: create, look up, revoke, list, and the audit of who created and revoked each.

A key reads `sw_<prefix>_<secret>`: the 12-hex-digit prefix is public (it finds the row and names
the key in listings and logs), the secret is 256 random bits. Only SHA-256 of the whole key is
stored. A slow password hash (bcrypt, argon2) buys nothing here: it defends guessable secrets, and
a 256-bit random one cannot be guessed; a fast hash keeps authentication off the hot path's budget.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from app.db import tenancy
from app.db.engine import Database, is_unique_violation
from app.db.tables import api_key_events, api_keys, tenants
from app.security.scopes import Scope, format_scopes, parse_scopes
from app.services.context import utc_now

PREFIX_HEX = 12
_TOKEN = re.compile(rf"sw_([0-9a-f]{{{PREFIX_HEX}}})_[A-Za-z0-9_-]{{43}}")
MAX_NAME = 100


class KeyInputError(ValueError):
    """A key cannot be created as asked (no scopes, bad name)."""


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    id: str
    name: str
    prefix: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    tenant_id: int = tenancy.DEFAULT_TENANT  # the tenant the key belongs to
    # a 3PL operator's key: the codes of the tenants it may act for, one named per request (empty: none)
    acts_for: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKeyView
    secret: str  # the whole key, shown once; only its hash is stored


@dataclass(frozen=True, slots=True)
class KeyEventView:
    """One audited change of a key: CREATED or REVOKED, by an admin key (None: from the command line)."""

    key_id: str
    key_prefix: str
    key_name: str
    action: str
    actor_key_id: str | None
    actor_prefix: str | None
    at: datetime

    @property
    def actor(self) -> str:
        return f"key {self.actor_prefix}" if self.actor_prefix else "command line"


CREATED = "CREATED"
REVOKED = "REVOKED"


async def _audit(conn: AsyncConnection, key_id: str, action: str, actor_key_id: str | None, at: datetime) -> None:
    # in the change's own transaction: a key is never created or revoked without its audit row
    await conn.execute(insert(api_key_events).values(key_id=key_id, action=action, actor_key_id=actor_key_id, at=at))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def prefix_of(token: str) -> str | None:
    """The prefix of a well-formed key, or None: malformed tokens never reach the database."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def _view(row: Any) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=parse_scopes(row.scopes.split(",")),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        tenant_id=row.tenant_id,
        acts_for=frozenset(row.acts_for.split(",")) if row.acts_for else frozenset(),
    )


async def _check_tenants(conn: AsyncConnection, codes: frozenset[str]) -> None:
    known = set(await conn.scalars(select(tenants.c.code).where(tenants.c.code.in_(sorted(codes)))))
    if known != codes:
        raise KeyInputError(f"no tenant {', '.join(sorted(codes - known))}")


def _check(name: str, scopes: Iterable[Scope]) -> frozenset[Scope]:
    given = frozenset(scopes)
    if not given:
        raise KeyInputError("a key needs at least one scope")
    if not name.strip() or len(name) > MAX_NAME:
        raise KeyInputError(f"name must be 1-{MAX_NAME} characters")
    return given


async def create_key(
    db: Database,
    name: str,
    scopes: Iterable[Scope],
    clock: Callable[[], datetime] = utc_now,
    actor_key_id: str | None = None,
    acts_for: Iterable[str] = (),
) -> CreatedKey:
    """`actor_key_id`: the admin key that asks (None: the command line), kept in the audit. The key
    belongs to the current tenant (app/db/tenancy.py); `acts_for`: tenant codes an operator's key may
    act for (then every request must name one)."""
    wanted = _check(name, scopes)
    operator = frozenset(acts_for)
    for _ in range(3):  # a prefix collision (1 in 2^48 per pair of keys) just draws again
        prefix = secrets.token_hex(PREFIX_HEX // 2)
        secret = f"sw_{prefix}_{secrets.token_urlsafe(32)}"
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "name": name.strip(),
            "prefix": prefix,
            "hash": digest(secret),
            "scopes": format_scopes(wanted),
            "created_at": clock(),
            "revoked_at": None,
            "last_used_at": None,
            "acts_for": ",".join(sorted(operator)) or None,
        }

        async def work(conn: AsyncConnection, values: dict[str, Any] = values) -> None:
            if operator:
                await _check_tenants(conn, operator)
            await conn.execute(api_keys.insert().values(**values))
            await _audit(conn, values["id"], CREATED, actor_key_id, values["created_at"])

        try:
            await db.write(work, notify=False)
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            continue
        view = ApiKeyView(
            id=values["id"],
            name=values["name"],
            prefix=prefix,
            scopes=wanted,
            created_at=values["created_at"],
            revoked_at=None,
            last_used_at=None,
            tenant_id=tenancy.current() or tenancy.DEFAULT_TENANT,
            acts_for=operator,
        )
        return CreatedKey(key=view, secret=secret)
    raise RuntimeError("could not draw a unique key prefix")  # pragma: no cover


async def find_key(db: Database, token: str) -> ApiKeyView | None:
    """The key this token is (revoked or not), or None. Compares hashes in constant time.

    Before a request's tenant is known, so in system mode (the prefix is unique per tenant only)."""
    prefix = prefix_of(token)
    if prefix is None:
        return None
    with tenancy.system():
        async with db.read() as conn:
            rows = (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))).all()
    wanted = digest(token)
    for row in rows:
        if hmac.compare_digest(row.hash, wanted):
            return _view(row)
    return None


async def touch(db: Database, key_id: str, now: datetime) -> None:
    async def work(conn: AsyncConnection) -> None:
        await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))

    with tenancy.system():
        await db.write(work, notify=False)


async def tenant_ids(db: Database, codes: Iterable[str]) -> dict[str, int]:
    """Tenant code -> id, for the codes that name a tenant (tenants are not tenant data: any role reads them)."""
    async with db.read() as conn:
        rows = await conn.execute(select(tenants.c.code, tenants.c.id).where(tenants.c.code.in_(sorted(set(codes)))))
        return {code: tenant_id for code, tenant_id in rows}


async def revoke_key(
    db: Database, ident: str, clock: Callable[[], datetime] = utc_now, actor_key_id: str | None = None
) -> ApiKeyView | None:
    """Revoke by id or prefix; revoking a revoked key changes nothing (and audits nothing). None: no such key."""

    async def work(conn: AsyncConnection) -> ApiKeyView | None:
        match = or_(api_keys.c.id == ident, api_keys.c.prefix == ident)
        now = clock()
        revoked = await conn.execute(
            update(api_keys)
            .where(match, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(api_keys.c.id)
        )
        for (key_id,) in revoked.all():
            await _audit(conn, key_id, REVOKED, actor_key_id, now)
        row = (await conn.execute(select(api_keys).where(match))).first()
        return _view(row) if row is not None else None

    return await db.write(work, notify=False)


async def list_keys(db: Database, include_revoked: bool = True) -> list[ApiKeyView]:
    query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    async with db.read() as conn:
        return [_view(r) for r in await conn.execute(query)]


async def has_active_key(db: Database) -> bool:
    async with db.read() as conn:
        found = await conn.scalar(select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1))
    return found is not None


async def key_events(db: Database, key_id: str | None = None) -> list[KeyEventView]:
    """The audit of key changes, oldest first (of one key, by id or prefix, when given)."""
    actor = aliased(api_keys)
    query = (
        select(
            api_key_events.c.key_id,
            api_keys.c.prefix,
            api_keys.c.name,
            api_key_events.c.action,
            api_key_events.c.actor_key_id,
            actor.c.prefix.label("actor_prefix"),
            api_key_events.c.at,
        )
        .join(api_keys, api_keys.c.id == api_key_events.c.key_id)
        .outerjoin(actor, actor.c.id == api_key_events.c.actor_key_id)
        .order_by(api_key_events.c.at, api_key_events.c.id)
    )
    if key_id is not None:
        query = query.where(or_(api_keys.c.id == key_id, api_keys.c.prefix == key_id))
    async with db.read() as conn:
        return [
            KeyEventView(
                key_id=r.key_id,
                key_prefix=r.prefix,
                key_name=r.name,
                action=r.action,
                actor_key_id=r.actor_key_id,
                actor_prefix=r.actor_prefix,
                at=r.at,
            )
            for r in await conn.execute(query)
        ]
