"""reserve: hold every line of a checkout or nothing, under an idempotency key.

Units are held with `stock.hold`, the conditional update that makes overselling impossible; under a
channel, through `channels.hold_under_channel`, at most the channel's figure.
"""

from __future__ import annotations

import time
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import asyncpg
from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, stock
from app.db.engine import Database, is_unique_violation
from app.db.tables import locations, reservations, skus, stock_levels
from app.domain.accounts import b2b_fingerprint, b2b_request_errors
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import (
    RequestedLine,
    ReservationStatus,
    key_and_cart_errors,
    lines_fingerprint,
    plan_split,
    validate_lines,
    validate_ttl,
)
from app.services import channels, demand
from app.services.context import Ctx
from app.services.reservations import combining
from app.services.reservations.expiry import expire_due
from app.services.reservations.reads import load_views
from app.services.reservations.records import (
    active_row,
    by_idempotency_key,
    by_sku,
    record_holds,
    repeat,
    reserved_row,
)
from app.services.views import ReservationLineView, ReservationView

r_ = reservations
# a line without a location re-reads and re-plans when another checkout took its units meanwhile
_MAX_REPLANS = 8


# The checkout path's statements, built once (building one costs about as much CPU as running it).
# Claiming an idempotency key: the reservation row, unless the key is taken (then no row comes back).
_CLAIM = (
    postgresql.insert(r_)
    .on_conflict_do_nothing(index_elements=[r_.c.tenant_id, r_.c.idempotency_scope, r_.c.idempotency_key])
    .returning(r_.c.id)
)
# SKUs and locations of a request in one round trip
_RESOLVE = union_all(
    select(literal("S").label("kind"), skus.c.id, skus.c.code, skus.c.active).where(
        skus.c.code.in_(bindparam("sku_codes", expanding=True))
    ),
    select(literal("L").label("kind"), locations.c.id, locations.c.code, locations.c.active).where(
        locations.c.code.in_(bindparam("location_codes", expanding=True))
    ),
)


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    lines: list[RequestedLine]
    idempotency_key: str
    ttl_seconds: int | None = None
    channel_code: str | None = None
    cart_ref: str | None = None
    idempotency_scope: str = ""
    # B2B (issue 19): the account the hold is for (under `channel_code`), and whether to hold what the
    # figure allows instead of refusing (a partial hold)
    account_code: str | None = None
    allow_partial: bool = False


async def reserve(ctx: Ctx, req: ReserveRequest) -> ReservationView:
    """Hold every line or nothing. Raises Refused with the reasons when it cannot."""
    s = ctx.settings
    errors = validate_lines(req.lines, s.max_units_per_reservation)
    ttl = validate_ttl(req.ttl_seconds, s.default_ttl_seconds, s.max_ttl_seconds)
    if isinstance(ttl, UserError):
        errors.append(ttl)
    errors += key_and_cart_errors(req.idempotency_key, req.cart_ref)
    errors += b2b_request_errors(req.channel_code, req.account_code, req.allow_partial)
    if errors:
        raise Refused(errors)
    assert isinstance(ttl, int)
    fingerprint = b2b_fingerprint(
        lines_fingerprint(req.lines, req.channel_code, req.cart_ref), req.account_code, req.allow_partial
    )
    named = req.channel_code is None and all(ln.location_code is not None for ln in req.lines)
    # the usual checkout: every line at one named position (one SKU, one location)
    one_position = named and len({(ln.sku_code, ln.location_code) for ln in req.lines}) == 1

    async def on_driver(db: asyncpg.Connection) -> ReservationView:
        return await _reserve_named(db, req, ctx.clock(), ttl, fingerprint, ctx.actor.key_id)

    async def work(conn: AsyncConnection) -> ReservationView:
        now = ctx.clock()
        if named:
            return await _reserve_named(conn, req, now, ttl, fingerprint, ctx.actor.key_id)
        # claim the key first: one statement tells a first call from a retry, and a concurrent call
        # with the same key waits here on the unique index, before either holds anything
        rid = await _claim_key(conn, req, now, ttl, fingerprint, ctx.actor.key_id)
        if rid is None:
            earlier = await by_idempotency_key(conn, req.idempotency_scope, req.idempotency_key)
            return await repeat(conn, now, earlier, fingerprint)
        return await _hold_all(conn, req, now, rid, now + timedelta(seconds=ttl))

    async def ordinary() -> ReservationView:
        if one_position and time.monotonic() >= _dynamic_seen.get(ctx.db, _NEVER) + _DYNAMIC_HOLD_OFF:
            try:
                return await ctx.db.write_driver(on_driver)
            except _Elsewhere as exc:
                # rolled back, nothing of it stays: answered by the general path below
                if exc.dynamic:
                    _dynamic_seen[ctx.db] = time.monotonic()
            except IntegrityError as exc:
                if not is_unique_violation(exc):
                    raise
        try:
            return await ctx.db.write(work)
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # a concurrent call with the same key won the insert: answer as a repeat of it
            return await ctx.db.write(work)

    if combining.applies(ctx, req):
        # issue 15: checkouts arriving while one holds the same position share one transaction
        # (None: answered the ordinary way)
        combined = await combining.reserve(ctx, req, ttl, fingerprint, ordinary)
        if combined is not None:
            return combined
    return await ordinary()


class _Elsewhere(Exception):
    """The one-position path leaves this request to the general one (its transaction rolls back).
    `dynamic`: because the hold found a dynamic channel buffer to move."""

    def __init__(self, dynamic: bool = False) -> None:
        super().__init__()
        self.dynamic = dynamic


# a hold that found a dynamic channel buffer to move sends one-position checkouts the general way for a
# while (moving buffers needs it): a deployment with dynamic buffers does not pay for every reserve twice.
# When it was last seen is per database: what one database's channels have says nothing about another's
# (a process may hold several: tests, the bench), and a memo of the module leaked from one to the next.
_DYNAMIC_HOLD_OFF = 60.0
_NEVER = float("-inf")
_dynamic_seen: weakref.WeakKeyDictionary[Database, float] = weakref.WeakKeyDictionary()

# the units available at one position (a refusal's shortfall), as `_insufficient` reads them
_AVAILABLE_AT = (
    f"SELECT {stock.available_sql().compile(dialect=postgresql.dialect())} "  # type: ignore[no-untyped-call]
    "FROM stock_levels WHERE sku_id = $1 AND location_id = $2"
)


async def _reserve_named(
    conn: AsyncConnection | asyncpg.Connection,
    req: ReserveRequest,
    now: datetime,
    ttl: int,
    fingerprint: str,
    owner_key_id: str | None,
) -> ReservationView:
    """The usual checkout (every line names its location, no channel) in three round trips: BEGIN,
    the claim with the look-ups (pg.open_reservation), one statement per position held (with all it
    writes), and the COMMIT. The same steps and promises as the general path below: the key claimed
    first, expired holds on these SKUs given back before holding, the conditional hold.

    `conn` is also the asyncpg connection of `Database.write_driver` (the one-position checkout, without
    SQLAlchemy's connection around it): there, what needs SQLAlchemy's path (answer a repeat of the
    key, give back expired holds due on the SKU, move dynamic buffers) raises `_Elsewhere` instead."""
    # the id is made by Postgres (pg.open_reservation says why)
    row = active_row(
        now, ttl, req.idempotency_scope, req.idempotency_key, fingerprint, None, req.cart_ref, make_id=False
    )
    row["owner_key_id"] = owner_key_id
    row["account_code"] = req.account_code
    claimed, skus_found, locations_found, due = await pg.open_reservation(
        conn if isinstance(conn, asyncpg.Connection) else await pg.driver(conn),
        row,
        sorted({ln.sku_code for ln in req.lines}),
        sorted({ln.location_code for ln in req.lines if ln.location_code is not None}),
    )
    if claimed is None:
        if isinstance(conn, asyncpg.Connection):
            raise _Elsewhere
        earlier = await by_idempotency_key(conn, req.idempotency_scope, req.idempotency_key)
        return await repeat(conn, now, earlier, fingerprint)
    sku_rows = {code: _Found(i, code, active) for code, (i, active) in skus_found.items()}
    loc_rows = {code: _Found(i, code, active) for code, (i, active) in locations_found.items()}
    _check_resolved(req, sku_rows, loc_rows)
    if due:
        if isinstance(conn, asyncpg.Connection):
            raise _Elsewhere
        # rare: some hold on these SKUs is past its expiry; give it back the locking way (as _hold_all)
        await expire_due(conn, now, sku_ids=sorted({r.id for r in sku_rows.values()}), wait=True)
    return await _hold_named(conn, req, now, claimed, row["expires_at"], sku_rows, loc_rows)


@dataclass(frozen=True, slots=True)
class _Found:
    """A SKU or location of the request, as _resolve's rows give it."""

    id: int
    code: str
    active: bool


async def _claim_key(
    conn: AsyncConnection, req: ReserveRequest, now: datetime, ttl: int, fingerprint: str, owner_key_id: str | None
) -> str | None:
    """Insert the ACTIVE reservation row unless its idempotency key is taken; its id, or None if taken.

    A refusal later in the transaction rolls the row back, so a refused attempt is not remembered."""
    row = active_row(now, ttl, req.idempotency_scope, req.idempotency_key, fingerprint, req.channel_code, req.cart_ref)
    row["owner_key_id"] = owner_key_id
    row["account_code"] = req.account_code
    return cast(str | None, (await conn.execute(_CLAIM, row)).scalar_one_or_none())


async def _hold_all(
    conn: AsyncConnection, req: ReserveRequest, now: datetime, rid: str, expires_at: datetime
) -> ReservationView:
    sku_rows, loc_rows = await _resolve(conn, req)
    # holds past their expiry never block a new reservation, even before the sweeper runs: they are given
    # back first, waiting for a sweeper that is expiring one right now rather than skipping it
    await expire_due(conn, now, sku_ids=sorted({r.id for r in sku_rows.values()}), wait=True)
    if req.channel_code is None and all(ln.location_code is not None for ln in req.lines):
        return await _hold_named(conn, req, now, rid, expires_at, sku_rows, loc_rows)
    held: dict[stock.Pair, int] = defaultdict(int)
    holds: list[stock.Hold] = []
    backordered: dict[stock.Pair, int] = {}
    preordered: dict[stock.Pair, int] = {}
    # lines in primary-key order: two checkouts wanting the same SKUs lock their rows in the same order
    ordered = sorted(req.lines, key=lambda ln: (sku_rows[ln.sku_code].id, ln.location_code or ""))
    if req.channel_code is not None:
        # under a channel: at most its figure per SKU, enforced behind the (channel, SKU) guard row
        taken = await channels.hold_under_channel(
            conn,
            now,
            req.channel_code,
            ordered,
            sku_rows,
            loc_rows,
            lambda c, t, ids: expire_due(c, t, sku_ids=ids),
            account_code=req.account_code,
            allow_partial=req.allow_partial,
        )
        held, holds, backordered = taken.held, taken.holds, taken.backordered
        preordered = taken.preordered  # issue 18
        ordered = []
    for line in ordered:
        sku_id = sku_rows[line.sku_code].id
        if line.location_code is not None:
            pair = (sku_id, loc_rows[line.location_code].id)
            version = await stock.hold(conn, pair[0], pair[1], line.quantity, now)
            if version is None:
                raise Refused([await _insufficient(conn, line, [pair[1]])])
            held[pair] += line.quantity
            holds.append((pair, line.quantity, version))
        else:
            for pair, q, version in await _hold_anywhere(conn, now, sku_id, line):
                held[pair] += q
                holds.append((pair, q, version))
    expected = await record_holds(conn, now, rid, held, holds, req.cart_ref, backordered, preordered)
    view = _view_of_new(req, now, expires_at, rid, sku_rows, loc_rows, held, backordered, expected)
    return view if view is not None and not preordered else (await load_views(conn, now, [rid]))[0]


async def _hold_named(
    conn: AsyncConnection | asyncpg.Connection,
    req: ReserveRequest,
    now: datetime,
    rid: str,
    expires_at: datetime,
    sku_rows: dict[str, Any],
    loc_rows: dict[str, Any],
) -> ReservationView:
    """The usual checkout: every line names its location, so the rows to write are known up front.

    Each position is held by one statement that also writes its line, ledger and outbox rows (and, for
    a one-position checkout, the sale): on a hot SKU, checkouts queue on the position's row lock, and
    every round trip inside it costs throughput. A refused hold rolls all of it back. On the asyncpg
    connection (one position only: `_reserve_named`), a dynamic buffer to move raises `_Elsewhere`."""
    wanted: dict[stock.Pair, int] = defaultdict(int)
    line_of: dict[stock.Pair, RequestedLine] = {}
    for line in req.lines:
        assert line.location_code is not None
        pair = (sku_rows[line.sku_code].id, loc_rows[line.location_code].id)
        wanted[pair] += line.quantity
        line_of[pair] = line
    pairs = sorted(wanted)  # primary-key order: checkouts wanting the same rows lock them in one order
    single = len(pairs) == 1
    dynamic = False
    for pair in pairs:
        ledger = reserved_row(pair, wanted[pair], 0, now, rid, req.cart_ref)  # the version is the hold's
        sale = ("", float(wanted[pair])) if single else None  # issue 18: sales velocity
        taken = await stock.hold_named(conn, pair, wanted[pair], now, ledger, sale, demand.half_life_seconds())
        if taken is None:
            driver = conn if isinstance(conn, asyncpg.Connection) else await pg.driver(conn)
            available = await pg.run(driver.fetchval, _AVAILABLE_AT, pair[0], pair[1])
            raise Refused([_shortfall(line_of[pair], 0 if available is None else max(0, int(available)))])
        if taken[1] and isinstance(conn, asyncpg.Connection):
            raise _Elsewhere(dynamic=True)  # moving buffers is SQLAlchemy's path's
        dynamic = dynamic or taken[1]
    if not single:
        assert not isinstance(conn, asyncpg.Connection)  # the driver's checkouts hold one position
        await demand.note_reserved(conn, now, rid, by_sku(wanted), "")
    elif dynamic:
        assert not isinstance(conn, asyncpg.Connection)  # raised _Elsewhere above
        await demand.refresh_buffers(conn, now, sku_ids={pairs[0][0]})  # as note_sales does after a sale
    view = _view_of_new(req, now, expires_at, rid, sku_rows, loc_rows, wanted, {}, {})
    assert view is not None  # every location was named
    return view


def _view_of_new(
    req: ReserveRequest,
    now: datetime,
    expires_at: datetime,
    rid: str,
    sku_rows: dict[str, Any],
    loc_rows: dict[str, Any],
    held: dict[stock.Pair, int],
    backordered: dict[stock.Pair, int],
    expected: dict[stock.Pair, datetime],
) -> ReservationView | None:
    """The new reservation as load_views would read it back, without the two reads, when every line's
    location was named in the request (the usual checkout); None when a location was chosen for it."""
    sku_code = {r.id: r.code for r in sku_rows.values()}
    location_code = {r.id: r.code for r in loc_rows.values()}
    pairs = set(held) | set(backordered)
    if any(p[1] not in location_code for p in pairs):
        return None
    lines = sorted(
        (
            ReservationLineView(
                sku_code[p[0]],
                location_code[p[1]],
                held.get(p, 0) + backordered.get(p, 0),
                backordered.get(p, 0),
                expected.get(p) if backordered.get(p) else None,
            )
            for p in pairs
        ),
        key=lambda ln: (ln.sku_code, ln.location_code),
    )
    return ReservationView(
        id=rid,
        status=ReservationStatus.ACTIVE,
        expires_at=expires_at,
        created_at=now,
        cart_ref=req.cart_ref,
        order_ref=None,
        channel_code=req.channel_code,
        lines=tuple(lines),
    )


async def _resolve(conn: AsyncConnection, req: ReserveRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    codes = {ln.sku_code for ln in req.lines}
    loc_codes = {ln.location_code for ln in req.lines if ln.location_code is not None}
    # SKUs and locations in one round trip: this runs on every checkout
    sku_rows: dict[str, Any] = {}
    loc_rows: dict[str, Any] = {}
    for r in await conn.execute(_RESOLVE, {"sku_codes": list(codes), "location_codes": list(loc_codes)}):
        (sku_rows if r.kind == "S" else loc_rows)[r.code] = r
    _check_resolved(req, sku_rows, loc_rows)
    return sku_rows, loc_rows


def _check_resolved(req: ReserveRequest, sku_rows: dict[str, Any], loc_rows: dict[str, Any]) -> None:
    """Refused unless every SKU and location of the request exists and is active."""
    errors: list[UserError] = []
    for i, ln in enumerate(req.lines):
        where = ("lines", str(i))
        sku = sku_rows.get(ln.sku_code)
        if sku is None:
            errors.append(UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {ln.sku_code!r}", (*where, "skuCode")))
        elif not sku.active:
            errors.append(UserError(ErrorCode.INACTIVE_SKU, f"SKU {ln.sku_code!r} is deactivated", (*where, "skuCode")))
        if ln.location_code is not None:
            loc = loc_rows.get(ln.location_code)
            if loc is None:
                errors.append(
                    UserError(ErrorCode.UNKNOWN_LOCATION, f"no location {ln.location_code!r}", (*where, "locationCode"))
                )
            elif not loc.active:
                errors.append(
                    UserError(
                        ErrorCode.INACTIVE_LOCATION,
                        f"location {ln.location_code!r} is inactive",
                        (*where, "locationCode"),
                    )
                )
    if errors:
        raise Refused(errors)


async def _hold_anywhere(
    conn: AsyncConnection, now: datetime, sku_id: int, line: RequestedLine
) -> list[tuple[stock.Pair, int, int]]:
    """Take a line from active locations in priority order, splitting across them when needed."""
    taken: list[tuple[stock.Pair, int, int]] = []
    left = line.quantity
    for _ in range(_MAX_REPLANS):
        candidates = await _candidates(conn, sku_id)
        plan = plan_split(left, candidates)
        if sum(q for _, q in plan) < left:
            break
        for location_id, q in plan:
            version = await stock.hold(conn, sku_id, location_id, q, now)
            if version is None:
                break  # another checkout took these units since we looked: plan again
            taken.append(((sku_id, location_id), q, version))
            left -= q
        if left == 0:
            return taken
    raise Refused([await _insufficient(conn, line, [c for c, _ in await _candidates(conn, sku_id)], left)])


async def _candidates(conn: AsyncConnection, sku_id: int) -> list[tuple[int, int]]:
    available = stock.available_sql()
    rows = await conn.execute(
        select(stock_levels.c.location_id, available.label("available"))
        .join(locations, locations.c.id == stock_levels.c.location_id)
        .where(stock_levels.c.sku_id == sku_id, locations.c.active.is_(True), available > 0)
        .order_by(locations.c.priority, locations.c.code)
    )
    return [(r.location_id, int(r.available)) for r in rows]


async def _insufficient(
    conn: AsyncConnection, line: RequestedLine, location_ids: list[int], short: int | None = None
) -> UserError:
    available = 0
    if location_ids:
        sku_id = await conn.scalar(select(skus.c.id).where(skus.c.code == line.sku_code))
        rows = await conn.execute(
            select(stock.available_sql()).where(
                stock_levels.c.sku_id == sku_id, stock_levels.c.location_id.in_(location_ids)
            )
        )
        available = sum(max(0, int(v)) for (v,) in rows)
    return _shortfall(line, available)


def _shortfall(line: RequestedLine, available: int) -> UserError:
    """INSUFFICIENT_STOCK for `line` with the units `available` where it asked."""
    where = f" at {line.location_code}" if line.location_code else ""
    return UserError(
        ErrorCode.INSUFFICIENT_STOCK,
        f"{line.sku_code}: {line.quantity} requested{where}, {available} available",
        ("lines", line.sku_code),
    )
