"""B2B accounts: buyer companies under a channel, their allocations, and the keys that serve them.

The figure an account sees is the channel's (its six rules) narrowed by step 7
(`app.domain.accounts.account_availability`). `narrow` gathers step 7's inputs for the channel code
paths (the API, `reserve` under the channel's guard lock, the relay), so a rep quoting for an account
and that account's storefront read one number, and `reserve` holds at most that number.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import note_outbox_rows
from app.db.tables import (
    accounts,
    api_key_accounts,
    api_keys,
    channel_locations,
    channels,
    outbox,
    reservation_lines,
    reservations,
    stock_levels,
)
from app.domain.accounts import AccountRules, account_availability, account_rule_errors, open_fence
from app.domain.channel_rules import ChannelFigure
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import ReservationStatus
from app.services.context import Ctx


@dataclass(frozen=True, slots=True)
class AccountInput:
    code: str
    name: str
    channel_code: str
    ring_fenced_units: int | None = None
    allocation_cap: int | None = None
    allocation_percent: float | None = None
    clear_cap: bool = False
    clear_percent: bool = False


@dataclass(frozen=True, slots=True)
class AccountView:
    code: str
    name: str
    channel_code: str
    rules: AccountRules
    version: int


def _rules(row: Any) -> AccountRules:
    percent = row.allocation_percent
    return AccountRules(
        ring_fenced_units=int(row.ring_fenced_units),
        allocation_cap=None if row.allocation_cap is None else int(row.allocation_cap),
        allocation_percent=None if percent is None else float(str(Decimal(percent).normalize())),
    )


def unknown_account(code: str, field: str = "accountCode") -> Refused:
    return Refused([UserError(ErrorCode.UNKNOWN_ACCOUNT, f"no account {code!r}", (field,))])


# --- configuration -----------------------------------------------------------------------------


async def upsert_accounts(ctx: Ctx, items: list[AccountInput]) -> list[AccountView]:
    """Create or update accounts by code; omitted allocation fields keep their stored value.

    A change moves the channel's version and queues its SKUs, so every figure of the channel (its own
    and its accounts') is published again."""
    errors: list[UserError] = []
    for i, item in enumerate(items):
        where = ("input", str(i))
        if not item.code.strip() or len(item.code) > 100 or item.code != item.code.strip():
            errors.append(UserError(ErrorCode.INVALID_INPUT, "code must be 1-100 characters", (*where, "code")))
        if not item.name.strip() or len(item.name) > 300:
            errors.append(UserError(ErrorCode.INVALID_INPUT, "name must be 1-300 characters", (*where, "name")))
        rules = AccountRules(item.ring_fenced_units or 0, item.allocation_cap, item.allocation_percent)
        errors += [UserError(ErrorCode.INVALID_INPUT, m, (*where, f)) for f, m in account_rule_errors(rules)]
    if len({i.code for i in items}) < len(items):
        errors.append(UserError(ErrorCode.INVALID_INPUT, "an account code appears twice", ("input",)))
    if errors:
        raise Refused(errors)
    now = ctx.clock()

    async def work(conn: AsyncConnection) -> list[AccountView]:
        channel_ids = {
            r.code: r.id
            for r in await conn.execute(
                select(channels.c.code, channels.c.id).where(channels.c.code.in_({i.channel_code for i in items}))
            )
        }
        missing = [
            UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {i.channel_code!r}", ("input", str(n), "channelCode"))
            for n, i in enumerate(items)
            if i.channel_code not in channel_ids
        ]
        if missing:
            raise Refused(missing)
        existing = {
            r.code: r for r in await conn.execute(select(accounts).where(accounts.c.code.in_([i.code for i in items])))
        }
        touched: set[int] = set()
        for item in items:
            values: dict[str, Any] = {"name": item.name, "channel_id": channel_ids[item.channel_code]}
            if item.ring_fenced_units is not None:
                values["ring_fenced_units"] = item.ring_fenced_units
            if item.allocation_cap is not None or item.clear_cap:
                values["allocation_cap"] = item.allocation_cap
            if item.allocation_percent is not None or item.clear_percent:
                p = item.allocation_percent
                values["allocation_percent"] = None if p is None else Decimal(str(p))
            old = existing.get(item.code)
            if old is None:
                await conn.execute(
                    insert(accounts).values(**values, code=item.code, version=1, created_at=now, updated_at=now)
                )
            else:
                touched.add(int(old.channel_id))
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == old.id)
                    .values(**values, version=accounts.c.version + 1, updated_at=now)
                )
            touched.add(channel_ids[item.channel_code])
        await _republish(conn, touched, now)
        return await _views(conn, [i.code for i in items])

    return await ctx.db.write(work)


async def _republish(conn: AsyncConnection, channel_ids: set[int], now: datetime) -> None:
    """An allocation changed: the channel's figures (fences) and its accounts' move; publish them again."""
    if not channel_ids:
        return
    await conn.execute(
        update(channels).where(channels.c.id.in_(channel_ids)).values(version=channels.c.version + 1, updated_at=now)
    )
    note_outbox_rows()
    await conn.execute(
        insert(outbox).from_select(
            ["sku_id", "location_id", "created_at"],
            select(stock_levels.c.sku_id, stock_levels.c.location_id, literal(now, type_=outbox.c.created_at.type))
            .join(channel_locations, channel_locations.c.location_id == stock_levels.c.location_id)
            .where(channel_locations.c.channel_id.in_(channel_ids))
            .distinct(),
        )
    )


async def _views(conn: AsyncConnection, codes: list[str] | None) -> list[AccountView]:
    q = (
        select(accounts, channels.c.code.label("channel_code"))
        .join(channels, channels.c.id == accounts.c.channel_id)
        .order_by(accounts.c.code)
    )
    if codes is not None:
        q = q.where(accounts.c.code.in_(codes))
    return [AccountView(r.code, r.name, r.channel_code, _rules(r), int(r.version)) for r in await conn.execute(q)]


async def list_accounts(ctx: Ctx, key_id: str | None, sees_all: bool) -> list[AccountView]:
    """The accounts a key serves; a key bound to none (an operator's, the channel's own) sees all."""
    bound = await _bound_codes(ctx, key_id)
    async with ctx.db.read() as conn:
        if bound:
            return await _views(conn, sorted(bound))
        return await _views(conn, None) if sees_all else []


async def set_key_accounts(ctx: Ctx, key: str, account_codes: list[str]) -> list[str]:
    """Bind a key (by id or prefix) to exactly these accounts ([]: to none). Returns the codes bound."""

    async def work(conn: AsyncConnection) -> list[str]:
        key_row = (
            await conn.execute(select(api_keys.c.id).where((api_keys.c.id == key) | (api_keys.c.prefix == key)))
        ).first()
        if key_row is None:
            raise Refused([UserError(ErrorCode.INVALID_INPUT, f"no API key {key!r}", ("keyId",))])
        ids = {
            r.code: r.id
            for r in await conn.execute(
                select(accounts.c.code, accounts.c.id).where(accounts.c.code.in_(account_codes))
            )
        }
        for code in account_codes:
            if code not in ids:
                raise unknown_account(code, "accountCodes")
        await conn.execute(delete(api_key_accounts).where(api_key_accounts.c.key_id == key_row.id))
        if ids:
            await conn.execute(
                insert(api_key_accounts), [{"key_id": key_row.id, "account_id": i} for i in sorted(ids.values())]
            )
        _bindings.pop(str(key_row.id), None)
        return sorted(ids)

    return await ctx.db.write(work)


# --- which account a call is for ---------------------------------------------------------------

# key id -> (when read, account codes): read on every availability call, so cached like key lookups
_bindings: dict[str, tuple[float, frozenset[str]]] = {}
BINDING_CACHE_SECONDS = 5.0


def _cached_bound(key_id: str | None) -> frozenset[str] | None:
    """The key's account codes if known without a query (none for no key), else None."""
    if key_id is None:
        return frozenset()
    hit = _bindings.get(key_id)
    if hit is not None and time.monotonic() - hit[0] < BINDING_CACHE_SECONDS:
        return hit[1]
    return None


# key reads in flight: the calls that miss the cache together share one read (a burst of 10,000
# subscriptions after the cache expired each checked a connection out for it and exhausted the pool)
_reading: dict[tuple[int, str], asyncio.Task[frozenset[str]]] = {}


async def _bound_codes(ctx: Ctx, key_id: str | None) -> frozenset[str]:
    """The key's account codes: from the cache, or read once for every call that misses it meanwhile."""
    known = _cached_bound(key_id)
    if known is not None or key_id is None:
        return known or frozenset()
    flight = (id(asyncio.get_running_loop()), key_id)
    reading = _reading.get(flight)
    if reading is None:
        # a task of its own: a caller that goes away (cancelled) leaves the read to the others
        reading = _reading[flight] = asyncio.create_task(_read_bound(ctx, key_id))
        reading.add_done_callback(lambda done: _reading.pop(flight, None) if _reading.get(flight) is done else None)
    return await asyncio.shield(reading)


async def _read_bound(ctx: Ctx, key_id: str) -> frozenset[str]:
    async with ctx.db.read() as conn:
        codes = frozenset(
            r.code
            for r in await conn.execute(
                select(accounts.c.code)
                .join(api_key_accounts, api_key_accounts.c.account_id == accounts.c.id)
                .where(api_key_accounts.c.key_id == key_id)
            )
        )
    _bindings[key_id] = (time.monotonic(), codes)
    return codes


class NotServed(Exception):
    """The key is bound to accounts and the call names another (or names none while it serves several)."""


@dataclass(frozen=True, slots=True)
class Scope:
    channel_code: str | None
    account_code: str | None


async def scope_for(ctx: Ctx, key_id: str | None, channel_code: str | None, account_code: str | None) -> Scope:
    """The channel and account a call is for. A key bound to one account (an account's storefront) is
    always for it; a rep's key (several) must name one of its accounts; other keys may name any.
    Raises NotServed, or Refused (UNKNOWN_ACCOUNT, UNKNOWN_CHANNEL for a channel the account is not under)."""
    if account_code is None and _cached_bound(key_id) == frozenset():
        # the usual checkout (no account named, the key bound to none, known from the cache): no
        # connection at all (checking one out and back cost every reserve ~5 % of its server CPU)
        return Scope(channel_code, None)
    bound = await _bound_codes(ctx, key_id)
    if bound:
        if account_code is None:
            if len(bound) > 1:
                raise NotServed("this key serves several accounts: name one with accountCode")
            account_code = next(iter(bound))
        elif account_code not in bound:
            raise NotServed(f"this key does not serve account {account_code!r}")
    if account_code is None:
        return Scope(channel_code, None)
    async with ctx.db.read() as conn:
        row = (
            await conn.execute(
                select(channels.c.code)
                .join(accounts, accounts.c.channel_id == channels.c.id)
                .where(accounts.c.code == account_code)
            )
        ).first()
    if row is None:
        raise unknown_account(account_code)
    if channel_code is not None and channel_code != row.code:
        raise Refused(
            [
                UserError(
                    ErrorCode.UNKNOWN_CHANNEL, f"account {account_code!r} buys through {row.code!r}", ("channelCode",)
                )
            ]
        )
    return Scope(row.code, account_code)


# --- step 7 --------------------------------------------------------------------------------------


async def narrow(
    conn: AsyncConnection,
    channel_id: int,
    figures: dict[int, ChannelFigure],
    account_code: str | None,
) -> tuple[dict[int, ChannelFigure], int]:
    """The channel's figures per SKU id after step 7 for `account_code` (None: a buyer without one),
    with the account's version (0 without one) to add to the figures' versions.

    Raises Refused (UNKNOWN_ACCOUNT) for an account not under this channel. With no accounts under
    the channel this is one read and changes nothing."""
    rows = list(await conn.execute(select(accounts).where(accounts.c.channel_id == channel_id)))
    if account_code is None and not any(int(r.ring_fenced_units) for r in rows):
        return figures, 0
    mine = next((r for r in rows if r.code == account_code), None)
    if account_code is not None and mine is None:
        raise unknown_account(account_code)
    held = await _held(conn, [r.code for r in rows], list(figures))
    out: dict[int, ChannelFigure] = {}
    for sku_id, figure in figures.items():
        others = sum(
            open_fence(int(r.ring_fenced_units), held.get((r.code, sku_id), 0)) for r in rows if r.code != account_code
        )
        rules = _rules(mine) if mine is not None else None
        got = account_availability(figure, rules, held.get((account_code or "", sku_id), 0), others)
        out[sku_id] = replace(
            figure,
            available=got.available,
            on_hand_part=got.on_hand_part,
            backorderable=got.backorderable,
            expected_at=figure.expected_at if got.backorderable else None,
            steps=figure.steps + got.steps,
        )
    return out, (int(mine.version) if mine is not None else 0)


async def _held(conn: AsyncConnection, codes: list[str], sku_ids: list[int]) -> dict[tuple[str, int], int]:
    """Units (from stock and backordered) each account holds in ACTIVE reservations, per SKU."""
    if not codes or not sku_ids:
        return {}
    r_, rl = reservations, reservation_lines
    rows = await conn.execute(
        select(r_.c.account_code, rl.c.sku_id, func.sum(rl.c.quantity + rl.c.backordered).label("units"))
        .join(rl, rl.c.reservation_id == r_.c.id)
        .where(r_.c.account_code.in_(codes), r_.c.status == ReservationStatus.ACTIVE.value, rl.c.sku_id.in_(sku_ids))
        .group_by(r_.c.account_code, rl.c.sku_id)
    )
    out: dict[tuple[str, int], int] = defaultdict(int)
    for r in rows:
        out[(r.account_code, r.sku_id)] = int(r.units)
    return out
