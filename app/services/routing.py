"""Order routing over live stock: the dry run (routeOrder), route-and-hold (routeAndReserve), the stored
decisions, and the per-location routing settings.

routeAndReserve is race-safe by construction: it reads each candidate's stock, routes with the pure
`app.domain.routing.route`, then holds every planned (sku, location, units) with `stock.hold`, the
conditional UPDATE that cannot oversell, and counts the order against each shipping location's daily
capacity with a conditional UPSERT. There is no Python check before a write: if a hold or a capacity
slot is gone when the database applies it (another order took it since the read), the whole
transaction rolls back and routing runs again on a fresh read, up to `_MAX_ROUTES` times; the loser of
a race is thus routed to the next location or refused with INSUFFICIENT_STOCK. Under a channel the
routed lines are held through `channels.hold_under_channel`, as `reserve` with a channelCode does: the
channel's figure bounds each SKU, the hold counts in the channel's holds, and what no location can
serve is backordered when the channel's allowance covers it.

Decisions are stored in `routing_decisions` with their inputs (the candidates' stock as seen), for
every routeAndReserve that got as far as routing: RESERVED with its reservation id, or REFUSED (stored
in its own small transaction after the refused one rolled back, so "why was this order refused?" can
be answered too). routeOrder dry runs are not stored: a query must have no side effects, and storing
would add a write to every quote a storefront asks for.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, literal, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.engine import is_unique_violation
from app.db.tables import (
    channel_locations,
    channels,
    location_daily_orders,
    location_routing,
    locations,
    reservation_lines,
    ring_fences,
    routing_decisions,
    skus,
    stock_levels,
)
from app.db.tables import reservations as reservations_table
from app.db.types import UTCDateTime
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import (
    RequestedLine,
    ReservationStatus,
    lines_fingerprint,
    validate_lines,
    validate_ttl,
)
from app.domain.routing import (
    Candidate,
    CandidateScore,
    Exclusion,
    GeoPoint,
    OrderLine,
    RoutingDecision,
    RoutingRequest,
    RoutingStrategy,
    Shipment,
    ShipmentLine,
    Shortfall,
    effective_ranking,
    route,
)
from app.services import channels as channels_service
from app.services import reservations, tenants
from app.services.context import Ctx
from app.services.views import ReservationView

log = logging.getLogger("stockwire.routing")

# Routing runs again on a fresh read when a hold or a capacity slot was taken since the read; each
# retry sees the winner's commit, so a few are enough even for a hot SKU.
_MAX_ROUTES = 8

OUTCOME_DRY_RUN = "DRY_RUN"
OUTCOME_RESERVED = "RESERVED"
OUTCOME_REFUSED = "REFUSED"


@dataclass(frozen=True, slots=True)
class RouteOrderRequest:
    order_ref: str
    lines: list[RequestedLine]
    channel_code: str | None = None
    idempotency_key: str | None = None  # defaults to order_ref
    destination: tuple[float, float] | None = None  # (latitude, longitude)
    cart_ref: str | None = None
    ttl_seconds: int | None = None
    allow_split: bool = True
    idempotency_scope: str = ""

    @property
    def key(self) -> str:
        return self.idempotency_key if self.idempotency_key is not None else self.order_ref


@dataclass(frozen=True, slots=True)
class DecisionView:
    """One routing decision, as returned by routeOrder/routeAndReserve or read back from storage."""

    order_ref: str
    channel_code: str | None
    outcome: str
    lines: tuple[OrderLine, ...]
    ranking: tuple[RoutingStrategy, ...]
    shipments: tuple[Shipment, ...]
    unserved: tuple[Shortfall, ...]
    candidates: tuple[CandidateScore, ...]
    reason: str
    errors: tuple[UserError, ...]
    created_at: datetime
    id: int | None = None
    reservation_id: str | None = None
    request: dict[str, Any] | None = None  # the inputs as stored; None for a dry run
    # units held against incoming stock under the channel's backorder allowance, per location
    backorders: tuple[Shipment, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteAndReserveResult:
    decision: DecisionView | None
    reservation: ReservationView | None
    errors: tuple[UserError, ...]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class LocationRoutingInput:
    location_code: str
    # None: clear the setting; UNSET (the default): keep what is stored
    daily_order_capacity: int | _Unset | None = UNSET
    shipping_cost: Decimal | _Unset | None = UNSET


@dataclass(frozen=True, slots=True)
class LocationRoutingView:
    location_code: str
    daily_order_capacity: int | None
    shipping_cost: Decimal | None
    orders_today: int


class _Contended(Exception):
    """A planned hold or capacity slot was taken since the read: roll back and route again."""


class _RefusedAfterRouting(Refused):
    """Refused with a decision worth keeping (stored after the rollback), and the inputs it was made on:
    the candidates as the router saw them, not as a later read would find them."""

    def __init__(self, errors: list[UserError], decision: DecisionView, request: dict[str, Any]) -> None:
        super().__init__(errors)
        self.decision = decision
        self.request = request


# --- the routing context: what the router sees ---------------------------------------------------


@dataclass(slots=True)
class _Setting:
    sku_ids: dict[str, int]  # sku code -> id
    location_ids: dict[str, int]  # location code -> id
    candidates: list[Candidate]
    ranking: tuple[RoutingStrategy, ...] | None
    channel_backorder_limit: int | None


def _day(now: datetime) -> str:
    return now.date().isoformat()  # the clock is UTC


def _parse_ranking(text: str | None) -> tuple[RoutingStrategy, ...] | None:
    if not text:
        return None
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    known = [RoutingStrategy(n) for n in names if n in RoutingStrategy.__members__]
    if len(known) != len(names):
        # a bad stored value must not take routing down; the default is a safe answer
        log.warning("ignoring unknown routing strategies in %r", text)
    return tuple(known) or None


def _validate(req: RouteOrderRequest, max_units: int) -> tuple[list[UserError], GeoPoint | None]:
    errors = validate_lines(req.lines, max_units)
    for i, ln in enumerate(req.lines):
        if ln.location_code is not None:
            errors.append(
                UserError(
                    ErrorCode.INVALID_INPUT,
                    "routing chooses the location: omit locationCode (use reserve to hold at a named location)",
                    ("lines", str(i), "locationCode"),
                )
            )
    if not req.order_ref.strip() or len(req.order_ref) > 200:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "orderRef must be 1-200 characters", ("orderRef",)))
    if not req.key.strip() or len(req.key) > 200:
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "idempotencyKey must be 1-200 characters", ("idempotencyKey",))
        )
    if req.cart_ref is not None and len(req.cart_ref) > 200:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "cartRef is at most 200 characters", ("cartRef",)))
    destination = None
    if req.destination is not None:
        try:
            destination = GeoPoint(*req.destination)
        except ValueError as exc:
            errors.append(UserError(ErrorCode.INVALID_INPUT, str(exc), ("destination",)))
    return errors, destination


async def _load(conn: AsyncConnection, req: RouteOrderRequest, now: datetime) -> _Setting:
    """Everything routing needs, read in three statements (locations, stock, and the channel)."""
    codes = {ln.sku_code for ln in req.lines}
    sku_rows = {
        r.code: r
        for r in await conn.execute(select(skus.c.id, skus.c.code, skus.c.active).where(skus.c.code.in_(codes)))
    }
    errors: list[UserError] = []
    for i, ln in enumerate(req.lines):
        sku = sku_rows.get(ln.sku_code)
        where = ("lines", str(i), "skuCode")
        if sku is None:
            errors.append(UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {ln.sku_code!r}", where))
        elif not sku.active:
            errors.append(UserError(ErrorCode.INACTIVE_SKU, f"SKU {ln.sku_code!r} is deactivated", where))
    channel: Any = None
    if req.channel_code is not None:
        channel = (
            await conn.execute(
                select(channels.c.id, channels.c.routing_ranking, channels.c.backorder_limit).where(
                    channels.c.code == req.channel_code
                )
            )
        ).first()
        if channel is None:
            errors.append(UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {req.channel_code!r}", ("channelCode",)))
    if errors:
        raise Refused(errors)

    code_of_sku = {r.id: r.code for r in sku_rows.values()}
    rows = (
        await _candidate_rows_pg(conn, code_of_sku, _day(now), channel.id if channel is not None else None)
        if conn.dialect.name == "postgresql"
        else await _candidate_rows(conn, code_of_sku, _day(now), channel.id if channel is not None else None)
    )
    fenced: dict[tuple[str, int], int] = {}
    if channel is not None:
        fenced = await _fenced_for_others(conn, channel.id, code_of_sku)
    location_ids: dict[str, int] = {}
    candidates: list[Candidate] = []
    # positional unpacking and no per-field keywords: this loop runs for every location on every order
    for loc_id, code, active, priority, lat, lon, cost, capacity, orders, stocked, linked in rows:
        location_ids[code] = loc_id
        if fenced and stocked:
            # units kept at this location for other channels are not this channel's to route
            stocked = {
                sku: left for sku, units in stocked.items() if (left := units - fenced.get((sku, loc_id), 0)) > 0
            }
        candidates.append(
            Candidate(
                code,
                bool(active),
                linked,
                priority,
                lat,
                lon,
                None if cost is None else Decimal(cost),
                capacity,
                orders or 0,
                stocked,
            )
        )
    return _Setting(
        sku_ids={code: r.id for code, r in sku_rows.items()},
        location_ids=location_ids,
        candidates=candidates,
        ranking=_parse_ranking(channel.routing_ranking) if channel is not None else None,
        channel_backorder_limit=channel.backorder_limit if channel is not None else None,
    )


async def _fenced_for_others(
    conn: AsyncConnection, channel_id: int, code_of_sku: dict[int, str]
) -> dict[tuple[str, int], int]:
    """(sku code, location id) -> units ring-fenced there for other channels, less what those channels
    already hold there in active reservations: the same rule as a channel's figure
    (`app.services.channels`), so routing never plans a hold the channel's rules would refuse."""
    rf = ring_fences
    fences = list(
        await conn.execute(
            select(rf.c.sku_id, rf.c.location_id, rf.c.units, channels.c.code)
            .join(channels, channels.c.id == rf.c.channel_id)
            .where(rf.c.sku_id.in_(list(code_of_sku)), rf.c.channel_id != channel_id, rf.c.units > 0)
        )
    )
    if not fences:
        return {}
    r_, rl = reservations_table, reservation_lines
    held = {
        (r.channel_code, r.sku_id, r.location_id): int(r.units)
        for r in await conn.execute(
            select(r_.c.channel_code, rl.c.sku_id, rl.c.location_id, func.sum(rl.c.quantity).label("units"))
            .join(r_, r_.c.id == rl.c.reservation_id)
            .where(
                r_.c.status == ReservationStatus.ACTIVE.value,
                r_.c.channel_code.in_({f.code for f in fences}),
                rl.c.sku_id.in_(list(code_of_sku)),
            )
            .group_by(r_.c.channel_code, rl.c.sku_id, rl.c.location_id)
        )
    }
    out: dict[tuple[str, int], int] = {}
    for f in fences:
        left = max(0, int(f.units) - held.get((f.code, f.sku_id, f.location_id), 0))
        key = (code_of_sku[f.sku_id], f.location_id)
        out[key] = out.get(key, 0) + left
    return out


# "what a location can sell now", as PostgreSQL spells it
_AVAILABLE_PG = str(stock.available_sql().compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]

_Row = tuple[int, str, bool, int, float | None, float | None, Any, int | None, int | None, dict[str, int], bool]

# PostgreSQL: one hand-written statement, compiled once. What each location can sell now of the
# order's SKUs comes back as two arrays per location (asyncpg decodes arrays natively): 200 rows
# instead of one row per (SKU, location), and no JSON to parse, which is where most of a routing
# call's time went.
_CANDIDATES_PG = (
    "SELECT l.id, l.code, l.active, l.priority, l.latitude, l.longitude, lr.shipping_cost, "
    f"{tenants.SITE_CAPACITY_SQL}, {tenants.SITE_ORDERS_SQL}, h.sku_ids, h.units, {{linked}} AS linked "
    "FROM locations l "
    "LEFT JOIN location_routing lr ON lr.location_id = l.id "
    "LEFT JOIN location_daily_orders ldo ON ldo.location_id = l.id AND ldo.day = :day "
    f"{tenants.SITE_JOIN_SQL} "
    "LEFT JOIN (SELECT stock_levels.location_id, array_agg(stock_levels.sku_id) AS sku_ids, "
    f"array_agg({_AVAILABLE_PG}) AS units FROM stock_levels "
    f"WHERE stock_levels.sku_id = ANY(CAST(:skus AS integer[])) AND {_AVAILABLE_PG} > 0 "
    "GROUP BY stock_levels.location_id) h ON h.location_id = l.id"
)
_CANDIDATES_ANY_PG = text(_CANDIDATES_PG.format(linked="TRUE"))
# a channel sells only from its linked locations; one with no links sells from none
_CANDIDATES_CHANNEL_PG = text(
    _CANDIDATES_PG.format(
        linked="EXISTS (SELECT 1 FROM channel_locations cl WHERE cl.location_id = l.id AND cl.channel_id = :channel)"
    )
)


async def _candidate_rows_pg(
    conn: AsyncConnection, code_of_sku: dict[int, str], day: str, channel_id: int | None
) -> list[_Row]:
    params: dict[str, Any] = {"day": day, "skus": list(code_of_sku)}
    statement = _CANDIDATES_ANY_PG
    if channel_id is not None:
        params["channel"] = channel_id
        statement = _CANDIDATES_CHANNEL_PG
    code_of = code_of_sku.__getitem__
    # map/zip/dict run in C: this is built for every location on every order (asyncpg already gives
    # the bigint array as Python ints)
    return [
        (
            loc_id,
            code,
            active,
            priority,
            lat,
            lon,
            cost,
            capacity,
            orders,
            {} if sku_ids is None else dict(zip(map(code_of, sku_ids), units, strict=True)),
            linked,
        )
        for loc_id, code, active, priority, lat, lon, cost, capacity, orders, sku_ids, units, linked in (
            await conn.execute(statement, params)
        )
    ]


async def _candidate_rows(
    conn: AsyncConnection, code_of_sku: dict[int, str], day: str, channel_id: int | None
) -> list[_Row]:
    """The same read for SQLite, through SQLAlchemy, with a JSON object per location."""
    lr, ldo, cl = location_routing, location_daily_orders, channel_locations
    available = stock.available_sql()
    held = (
        select(stock_levels.c.location_id, func.json_group_object(stock_levels.c.sku_id, available).label("held"))
        .where(stock_levels.c.sku_id.in_(list(code_of_sku)), available > 0)
        .group_by(stock_levels.c.location_id)
        .subquery()
    )
    q = (
        select(
            locations.c.id,
            locations.c.code,
            locations.c.active,
            locations.c.priority,
            locations.c.latitude,
            locations.c.longitude,
            lr.c.shipping_cost,
            lr.c.daily_order_capacity,
            ldo.c.orders,
            held.c.held,
        )
        .outerjoin(lr, lr.c.location_id == locations.c.id)
        .outerjoin(ldo, and_(ldo.c.location_id == locations.c.id, ldo.c.day == day))
        .outerjoin(held, held.c.location_id == locations.c.id)
    )
    if channel_id is not None:
        q = q.add_columns(cl.c.location_id.label("linked")).outerjoin(
            cl, and_(cl.c.location_id == locations.c.id, cl.c.channel_id == channel_id)
        )
    else:
        q = q.add_columns(literal(1).label("linked"))
    return [
        (
            loc_id,
            code,
            bool(active),
            priority,
            lat,
            lon,
            cost,
            capacity,
            orders,
            {} if held_json is None else {code_of_sku[int(k)]: int(v) for k, v in json.loads(held_json).items()},
            linked is not None,
        )
        for loc_id, code, active, priority, lat, lon, cost, capacity, orders, held_json, linked in (
            await conn.execute(q)
        )
    ]


def _routing_request(req: RouteOrderRequest, setting: _Setting, destination: GeoPoint | None) -> RoutingRequest:
    return RoutingRequest(
        lines=tuple(OrderLine(ln.sku_code, ln.quantity) for ln in req.lines),
        destination=destination,
        ranking=setting.ranking,
        allow_split=req.allow_split,
    )


def _unserved_errors(req: RouteOrderRequest, decision: RoutingDecision) -> list[UserError]:
    index = {ln.sku_code: i for i, ln in enumerate(req.lines)}
    wanted = {ln.sku_code: ln.quantity for ln in req.lines}
    return [
        UserError(
            ErrorCode.INSUFFICIENT_STOCK,
            f"{u.sku_code}: {wanted[u.sku_code]} requested, {u.missing_quantity} could not be routed "
            "to an eligible location",
            ("lines", str(index[u.sku_code]), "quantity"),
        )
        for u in decision.unserved
    ]


def _view(
    req: RouteOrderRequest,
    routing: RoutingRequest,
    decision: RoutingDecision,
    outcome: str,
    errors: list[UserError],
    now: datetime,
    reason: str | None = None,
) -> DecisionView:
    return DecisionView(
        order_ref=req.order_ref,
        channel_code=req.channel_code,
        outcome=outcome,
        lines=routing.lines,
        ranking=effective_ranking(routing.ranking),
        shipments=decision.shipments,
        unserved=decision.unserved,
        candidates=decision.candidates,
        reason=reason or decision.reason,
        errors=tuple(errors),
        created_at=now,
    )


# --- routeOrder: the dry run ---------------------------------------------------------------------


async def route_order(ctx: Ctx, req: RouteOrderRequest) -> DecisionView:
    """Where the order would ship from now. Holds nothing, stores nothing; Refused on bad input."""
    errors, destination = _validate(req, ctx.settings.max_units_per_reservation)
    if errors:
        raise Refused(errors)
    now = ctx.clock()
    # in a transaction (no AUTOCOMMIT): the tenant it reads for is set per transaction (app/db/tenancy.py)
    async with ctx.db.read() as conn:
        setting = await _load(conn, req, now)
        routing = _routing_request(req, setting, destination)
        decision = route(routing, setting.candidates)
        if req.channel_code is None:
            return _view(req, routing, decision, OUTCOME_DRY_RUN, _unserved_errors(req, decision), now)
        # under a channel, answer as routeAndReserve would: its figure bounds each SKU, and what no
        # location can serve is backordered when the channel's allowance covers it
        figures = {
            v.sku_code: v.available
            for v in await channels_service.availability_in(
                conn, req.channel_code, [ln.sku_code for ln in req.lines], now
            )
        }
    errors, reason = _channel_dry_run(req, decision, figures, backorders=setting.channel_backorder_limit is not None)
    return _view(req, routing, decision, OUTCOME_DRY_RUN, errors, now, reason)


def _channel_dry_run(
    req: RouteOrderRequest, decision: RoutingDecision, figures: dict[str, int], backorders: bool
) -> tuple[list[UserError], str]:
    missing = {u.sku_code: u.missing_quantity for u in decision.unserved}
    errors: list[UserError] = []
    backordered: list[str] = []
    for i, ln in enumerate(req.lines):
        may_sell = figures.get(ln.sku_code, 0)
        if ln.quantity > may_sell:
            errors.append(
                UserError(
                    ErrorCode.INSUFFICIENT_STOCK,
                    f"{ln.sku_code}: {ln.quantity} requested, channel {req.channel_code} may sell {may_sell}",
                    ("lines", str(i), "quantity"),
                )
            )
        elif ln.sku_code in missing and backorders:
            backordered.append(f"{ln.sku_code} ({missing[ln.sku_code]})")
        elif ln.sku_code in missing:
            errors += [e for e in _unserved_errors(req, decision) if e.field == ("lines", str(i), "quantity")]
    reason = decision.reason
    if backordered and not errors:
        reason += "; would be backordered under the channel's allowance: " + ", ".join(backordered)
    return errors, reason


# --- routeAndReserve -----------------------------------------------------------------------------


def _fingerprint(req: RouteOrderRequest) -> str:
    """Same key, same order: lines, channel and cart as for reserve, plus what routing depends on."""
    base = lines_fingerprint(req.lines, req.channel_code, req.cart_ref)
    extra = f"route\x1f{req.order_ref}\x1f{req.destination}\x1f{req.allow_split}"
    return hashlib.sha256(f"{base}\x1e{extra}".encode()).hexdigest()


async def route_and_reserve(ctx: Ctx, req: RouteOrderRequest) -> RouteAndReserveResult:
    """Route, then hold the routed stock in the same transaction: every line or nothing, idempotent."""
    s = ctx.settings
    errors, destination = _validate(req, s.max_units_per_reservation)
    ttl = validate_ttl(req.ttl_seconds, s.default_ttl_seconds, s.max_ttl_seconds)
    if isinstance(ttl, UserError):
        errors.append(ttl)
    if errors:
        return RouteAndReserveResult(None, None, tuple(errors))
    assert isinstance(ttl, int)
    fingerprint = _fingerprint(req)

    async def work(conn: AsyncConnection) -> tuple[DecisionView, ReservationView]:
        earlier = await reservations.by_idempotency_key(conn, req.idempotency_scope, req.key)
        if earlier is not None:
            return await _repeat(conn, ctx, earlier, fingerprint)
        return await _route_and_hold(conn, ctx, req, destination, ttl, fingerprint, first_try=attempt == 1)

    for attempt in range(1, _MAX_ROUTES + 1):  # `work` reads `attempt`
        try:
            decision, view = await ctx.db.write(work)
        except _Contended:
            log.info("routing %s again: stock or capacity taken since the read (attempt %d)", req.order_ref, attempt)
            continue
        except _RefusedAfterRouting as refused:
            stored = await _store_refusal(ctx, refused.decision, refused.request)
            return RouteAndReserveResult(stored, None, tuple(refused.errors))
        except Refused as refused:
            return RouteAndReserveResult(None, None, tuple(refused.errors))
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            continue  # a concurrent call with the same key won the insert: the next attempt repeats it
        return RouteAndReserveResult(decision, view, ())
    # every attempt lost a race: the stock is moving faster than we can route it
    error = UserError(ErrorCode.INSUFFICIENT_STOCK, "stock changed while routing; try again", ("lines",))
    return RouteAndReserveResult(None, None, (error,))


async def _repeat(conn: AsyncConnection, ctx: Ctx, row: Any, fingerprint: str) -> tuple[DecisionView, ReservationView]:
    stored = (
        await conn.execute(
            select(routing_decisions)
            .where(routing_decisions.c.reservation_id == row.id)
            .order_by(routing_decisions.c.id.desc())
            .limit(1)
        )
    ).first()
    if row.fingerprint != fingerprint or stored is None:
        # a key used by reserve (no decision) or by another order is not this order's key
        raise Refused(
            [
                UserError(
                    ErrorCode.IDEMPOTENCY_CONFLICT,
                    "this idempotencyKey was used for a different order or reservation",
                    ("idempotencyKey",),
                )
            ]
        )
    view = (await reservations.load_views(conn, ctx.clock(), [row.id]))[0]
    return _decision_from_row(stored), view


async def _route_and_hold(
    conn: AsyncConnection,
    ctx: Ctx,
    req: RouteOrderRequest,
    destination: GeoPoint | None,
    ttl: int,
    fingerprint: str,
    first_try: bool = False,
) -> tuple[DecisionView, ReservationView]:
    now = ctx.clock()
    # the row first: a concurrent call with the same key fails here, before holding anything
    rid = await reservations.open_reservation(
        conn,
        now,
        idempotency_scope=req.idempotency_scope,
        idempotency_key=req.key,
        fingerprint=fingerprint,
        ttl_seconds=ttl,
        channel_code=req.channel_code,
        cart_ref=req.cart_ref,
        order_ref=req.order_ref,
        owner_key_id=ctx.actor.key_id,
    )
    if req.cart_ref is not None:
        # the checkout's own hold is given back first, so routing sees those units and the order is
        # never held twice; all in this transaction, so a refusal leaves the cart's hold as it was.
        # Only this key's cart: another key's reservations are not this caller's to release.
        await reservations.release_cart(conn, now, req.cart_ref, ctx.actor.key_id, keep=rid)

    setting = await _load(conn, req, now)
    routing = _routing_request(req, setting, destination)
    decision = route(routing, setting.candidates)
    if decision.unserved and await reservations.expire_due(conn, now, sku_ids=list(setting.sku_ids.values())):
        # holds past their expiry never block an order, even before the sweeper runs
        setting = await _load(conn, req, now)
        decision = route(routing, setting.candidates)
    if decision.unserved and (req.channel_code is None or setting.channel_backorder_limit is None):
        errors = _unserved_errors(req, decision)
        raise _RefusedAfterRouting(
            errors,
            _view(req, routing, decision, OUTCOME_REFUSED, errors, now),
            _request_record(req, setting, destination),
        )

    loc_ids = setting.location_ids
    backordered: dict[stock.Pair, int] = {}
    if req.channel_code is None:
        plan = sorted(
            ((setting.sku_ids[ln.sku_code], loc_ids[s.location_code]), ln.quantity)
            for s in decision.shipments
            for ln in s.lines
        )
        held = dict(plan)
        versions = await _hold_all(conn, now, plan)
        holds = [(pair, q, versions[pair]) for pair, q in plan]
    else:
        try:
            held, holds, backordered = await _hold_under_channel(conn, now, req.channel_code, setting, decision)
        except Refused as refused:
            if first_try:
                # The channel's rules refuse both an order beyond its figure and a routed position
                # whose units another order took since our read (it waited on the channel's lock
                # while that order committed). Route once more on a fresh read: the second kind then
                # goes to the next location; the first is refused again, for good.
                raise _Contended from refused
            errors = list(refused.errors)
            reason = f"{decision.reason}; refused under channel {req.channel_code}'s rules"
            raise _RefusedAfterRouting(
                errors,
                _view(req, routing, decision, OUTCOME_REFUSED, errors, now, reason),
                _request_record(req, setting, destination),
            ) from refused
        decision = _as_held(decision, setting, held, backordered)
    # a location counts an order when it ships stock today; backordered units ship when they arrive
    shipping = sorted({pair[1] for pair, q in held.items() if q})
    # after the holds: the per-location day row is a hot spot, so its lock is held for as short a time
    # as possible; stock rows then day rows, each in id order, so two orders cannot deadlock
    await _count_orders(conn, now, shipping, setting)
    await reservations.record_holds(conn, now, rid, held, holds, reference=req.order_ref, backordered=backordered)

    view = replace(
        _view(req, routing, decision, OUTCOME_RESERVED, [], now), backorders=_backorders(setting, backordered)
    )
    view = await _store(conn, view, _request_record(req, setting, destination), rid, ctx.actor.key_id)
    reservation = (await reservations.load_views(conn, now, [rid]))[0]
    return view, reservation


async def _hold_under_channel(
    conn: AsyncConnection, now: datetime, channel_code: str, setting: _Setting, decision: RoutingDecision
) -> tuple[dict[stock.Pair, int], list[stock.Hold], dict[stock.Pair, int]]:
    """Hold the routed lines under the channel's rules, the same way `reserve` with a channelCode does:
    never more per SKU than the channel's figure (safety buffers, allocation, ring fences for other
    channels), counted in the channel's holds so commit, release and expiry give them back. What
    routing could not serve from stock goes in as a line without a location: the channel's backorder
    allowance takes it against incoming stock, or the whole order is refused. Raises Refused."""
    lines = [RequestedLine(ln.sku_code, ln.quantity, s.location_code) for s in decision.shipments for ln in s.lines]
    # the routed (located) lines of a SKU before its remainder: stock first, backorder for the rest
    lines += [RequestedLine(u.sku_code, u.missing_quantity, None) for u in decision.unserved]
    sku_rows = {code: _Id(sku_id) for code, sku_id in setting.sku_ids.items()}
    loc_rows = {code: _Id(loc_id) for code, loc_id in setting.location_ids.items()}
    taken = await channels_service.hold_under_channel(
        conn,
        now,
        channel_code,
        lines,
        sku_rows,
        loc_rows,
        lambda c, t, ids: reservations.expire_due(c, t, sku_ids=ids),
    )
    return dict(taken.held), taken.holds, {p: q for p, q in taken.backordered.items() if q}


@dataclass(frozen=True, slots=True)
class _Id:
    id: int


def _as_held(
    decision: RoutingDecision, setting: _Setting, held: dict[stock.Pair, int], backordered: dict[stock.Pair, int]
) -> RoutingDecision:
    """The decision as the channel's rules let it be held: shipments are the units taken from stock
    (a channel may backorder part of a routed line), nothing is unserved once it is backordered."""
    code_of_sku = {i: c for c, i in setting.sku_ids.items()}
    code_of_loc = {i: c for c, i in setting.location_ids.items()}
    by_location: dict[str, list[ShipmentLine]] = {}
    for (sku_id, loc_id), q in sorted(held.items()):
        if q:
            by_location.setdefault(code_of_loc[loc_id], []).append(ShipmentLine(code_of_sku[sku_id], q))
    order = [s.location_code for s in decision.shipments]
    shipments = tuple(
        Shipment(code, tuple(sorted(lines)))
        for code, lines in sorted(by_location.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 1e9)
    )
    reason = decision.reason
    if backordered:
        reason += "; backordered under the channel's allowance: " + ", ".join(
            f"{code_of_sku[sku_id]} ({q}) at {code_of_loc[loc_id]}"
            for (sku_id, loc_id), q in sorted(backordered.items())
        )
    return replace(decision, shipments=shipments, unserved=(), reason=reason)


def _backorders(setting: _Setting, backordered: dict[stock.Pair, int]) -> tuple[Shipment, ...]:
    code_of_sku = {i: c for c, i in setting.sku_ids.items()}
    code_of_loc = {i: c for c, i in setting.location_ids.items()}
    by_location: dict[str, list[ShipmentLine]] = {}
    for (sku_id, loc_id), q in sorted(backordered.items()):
        by_location.setdefault(code_of_loc[loc_id], []).append(ShipmentLine(code_of_sku[sku_id], q))
    return tuple(Shipment(code, tuple(sorted(lines))) for code, lines in sorted(by_location.items()))


# One conditional UPDATE for every planned (sku, location, units) on Postgres: the same condition as
# `stock.hold` (the row changes only if the units are available when the database applies it), in
# one round trip instead of one per line (a 20-line order split over two locations is 20 holds).
_LOCK_PG = text(
    "SELECT stock_levels.sku_id FROM stock_levels "
    "JOIN unnest(CAST(:skus AS integer[]), CAST(:locs AS integer[])) AS v(sku_id, location_id) "
    "ON stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
    "ORDER BY stock_levels.sku_id, stock_levels.location_id FOR UPDATE OF stock_levels"
)
_HOLD_PG = text(
    "UPDATE stock_levels SET reserved = stock_levels.reserved + v.q, version = stock_levels.version + 1, "
    "updated_at = :now "
    "FROM unnest(CAST(:skus AS integer[]), CAST(:locs AS integer[]), CAST(:qs AS bigint[])) "
    "AS v(sku_id, location_id, q) "
    "WHERE stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
    f"AND {_AVAILABLE_PG} >= v.q "
    "RETURNING stock_levels.sku_id, stock_levels.location_id, stock_levels.version"
).bindparams(bindparam("now", type_=UTCDateTime))  # stored the way the column's type stores it


async def _hold_all(conn: AsyncConnection, now: datetime, plan: list[tuple[stock.Pair, int]]) -> dict[stock.Pair, int]:
    """Hold every planned line or raise _Contended; returns each position's new version."""
    if conn.dialect.name != "postgresql":
        # SQLite: one writer at a time, so a statement per line costs no round trip worth saving
        versions: dict[stock.Pair, int] = {}
        for pair, quantity in plan:
            version = await stock.hold(conn, pair[0], pair[1], quantity, now)
            if version is None:
                raise _Contended
            versions[pair] = version
        return versions
    skus = [p[0] for p, _ in plan]
    locs = [p[1] for p, _ in plan]
    # lock the rows in (sku, location) order first: two orders wanting the same rows queue instead of
    # deadlocking (the UPDATE alone would lock them in whatever order its join produces)
    await conn.execute(_LOCK_PG, {"skus": skus, "locs": locs})
    rows = await conn.execute(_HOLD_PG, {"skus": skus, "locs": locs, "qs": [q for _, q in plan], "now": now})
    versions = {(r.sku_id, r.location_id): int(r.version) for r in rows}
    if len(versions) != len(plan):
        raise _Contended  # someone took units since the read: the transaction rolls back, we route again
    return versions


async def _count_orders(conn: AsyncConnection, now: datetime, location_ids: list[int], setting: _Setting) -> None:
    """One order per shipping location today; a location whose capacity filled since the read is
    contended (the UPDATE's condition is checked by the database, under the row's lock)."""
    capacity = {setting.location_ids[c.location_code]: c.daily_capacity for c in setting.candidates}
    day = _day(now)
    ldo = location_daily_orders
    insert_: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for location_id in sorted(location_ids):
        limit = capacity.get(location_id)
        stmt = insert_(ldo).values(location_id=location_id, day=day, orders=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ldo.c.tenant_id, ldo.c.location_id, ldo.c.day],
            set_={"orders": ldo.c.orders + 1},
            where=(ldo.c.orders < limit) if limit is not None else None,
        ).returning(ldo.c.orders)
        if (await conn.execute(stmt)).first() is None:
            raise _Contended
    if conn.dialect.name == "postgresql" and not await tenants.count_site_orders(conn, location_ids, day):
        raise _Contended  # a shared site filled up with other tenants' orders since the read


# --- storing and reading decisions ---------------------------------------------------------------


def _request_record(req: RouteOrderRequest, setting: _Setting, destination: GeoPoint | None) -> dict[str, Any]:
    """The inputs, including each candidate as the router saw it (only the order's SKUs it held)."""
    return {
        "orderRef": req.order_ref,
        "channelCode": req.channel_code,
        "cartRef": req.cart_ref,
        "idempotencyKey": req.key,
        "allowSplit": req.allow_split,
        "destination": None
        if destination is None
        else {"latitude": destination.latitude, "longitude": destination.longitude},
        "lines": [{"skuCode": ln.sku_code, "quantity": ln.quantity} for ln in req.lines],
        "ranking": [s.value for s in setting.ranking] if setting.ranking is not None else None,
        "candidates": [
            {
                "locationCode": c.location_code,
                "active": c.active,
                "linked": c.linked,
                "priority": c.priority,
                "latitude": c.latitude,
                "longitude": c.longitude,
                "shippingCost": None if c.shipping_cost is None else str(c.shipping_cost),
                "dailyCapacity": c.daily_capacity,
                "ordersToday": c.orders_today,
                "available": dict(c.available),
            }
            for c in setting.candidates
        ],
    }


def _decision_record(view: DecisionView) -> dict[str, Any]:
    return {
        "outcome": view.outcome,
        "ranking": [s.value for s in view.ranking],
        "lines": [[ln.sku_code, ln.quantity] for ln in view.lines],
        "shipments": [[s.location_code, [list(ln) for ln in s.lines]] for s in view.shipments],
        "unserved": [list(u) for u in view.unserved],
        "candidates": [
            [
                c.location_code,
                c.excluded_reason.name if c.excluded_reason is not None else None,
                c.rank,
                c.covers_lines,
                c.covers_units,
                c.distance_km,
                c.priority,
                None if c.shipping_cost is None else str(c.shipping_cost),
            ]
            for c in view.candidates
        ],
        "reason": view.reason,
        "errors": [[e.code.value, e.message, list(e.field) if e.field else None] for e in view.errors],
        "backorders": [[s.location_code, [list(ln) for ln in s.lines]] for s in view.backorders],
    }


def _decision_from_row(row: Any) -> DecisionView:
    d = json.loads(row.decision)
    return DecisionView(
        id=int(row.id),
        order_ref=row.order_ref,
        channel_code=row.channel_code,
        reservation_id=row.reservation_id,
        created_at=row.created_at,
        request=json.loads(row.request),
        outcome=d["outcome"],
        ranking=tuple(RoutingStrategy(s) for s in d["ranking"]),
        lines=tuple(OrderLine(sku, q) for sku, q in d["lines"]),
        shipments=tuple(
            Shipment(code, tuple(ShipmentLine(sku, q) for sku, q in lines)) for code, lines in d["shipments"]
        ),
        unserved=tuple(Shortfall(sku, q) for sku, q in d["unserved"]),
        candidates=tuple(
            CandidateScore(
                code,
                Exclusion[excluded] if excluded is not None else None,
                rank,
                lines,
                units,
                distance,
                priority,
                Decimal(cost) if cost is not None else None,
            )
            for code, excluded, rank, lines, units, distance, priority, cost in d["candidates"]
        ),
        reason=d["reason"],
        errors=tuple(UserError(ErrorCode(c), m, tuple(f) if f else None) for c, m, f in d["errors"]),
        backorders=tuple(
            Shipment(code, tuple(ShipmentLine(sku, q) for sku, q in lines)) for code, lines in d.get("backorders", [])
        ),
    )


async def _store(
    conn: AsyncConnection,
    view: DecisionView,
    request: dict[str, Any],
    reservation_id: str | None,
    owner_key_id: str | None,
) -> DecisionView:
    new_id = await conn.scalar(
        insert(routing_decisions)
        .values(
            order_ref=view.order_ref,
            channel_code=view.channel_code,
            reservation_id=reservation_id,
            owner_key_id=owner_key_id,
            request=json.dumps(request, separators=(",", ":")),
            decision=json.dumps(_decision_record(view), separators=(",", ":")),
            created_at=view.created_at,
        )
        .returning(routing_decisions.c.id)
    )
    return replace(view, id=int(new_id or 0), reservation_id=reservation_id, request=request)


async def _store_refusal(ctx: Ctx, view: DecisionView, request: dict[str, Any]) -> DecisionView:
    """Keep a refused decision with the inputs it was routed on (the refused transaction changed nothing).

    `request` was recorded from the routing's own read: a fresh read here would store stock that
    other transactions moved since, and the decision would no longer follow from its inputs."""

    async def work(conn: AsyncConnection) -> DecisionView:
        return await _store(conn, view, request, None, ctx.actor.key_id)

    # a write that publishes nothing: no listener needs waking
    return await ctx.db.write(work, notify=False)


async def decisions_for_order(ctx: Ctx, order_ref: str, limit: int = 100) -> list[DecisionView]:
    """Stored decisions for an order reference that this actor made (an admin: every key's), oldest first."""
    mine = [] if ctx.actor.sees_all else [routing_decisions.c.owner_key_id == ctx.actor.key_id]
    async with ctx.db.read() as conn:
        rows = await conn.execute(
            select(routing_decisions)
            .where(routing_decisions.c.order_ref == order_ref, *mine)
            .order_by(routing_decisions.c.id)
            .limit(limit)
        )
        return [_decision_from_row(r) for r in rows]


# --- per-location settings -----------------------------------------------------------------------


async def set_location_routing(ctx: Ctx, items: Sequence[LocationRoutingInput]) -> list[LocationRoutingView]:
    errors: list[UserError] = []
    for i, item in enumerate(items):
        cap = item.daily_order_capacity
        if isinstance(cap, int) and cap < 0:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "dailyOrderCapacity must be >= 0", (str(i), "dailyOrderCapacity"))
            )
        cost = item.shipping_cost
        if isinstance(cost, Decimal):
            try:
                bad = not cost.is_finite() or cost < 0 or cost >= Decimal("1e8")
            except InvalidOperation:
                bad = True
            if bad:
                errors.append(
                    UserError(ErrorCode.INVALID_INPUT, "shippingCost must be 0 to 99999999", (str(i), "shippingCost"))
                )
    codes = [item.location_code for item in items]
    if len(set(codes)) != len(codes):
        errors.append(UserError(ErrorCode.DUPLICATE_LINE, "a location appears twice", ("input",)))
    if errors:
        raise Refused(errors)

    async def work(conn: AsyncConnection) -> list[LocationRoutingView]:
        ids = {
            r.code: r.id
            for r in await conn.execute(select(locations.c.id, locations.c.code).where(locations.c.code.in_(codes)))
        }
        unknown = [
            UserError(ErrorCode.UNKNOWN_LOCATION, f"no location {c!r}", (str(i), "locationCode"))
            for i, c in enumerate(codes)
            if c not in ids
        ]
        if unknown:
            raise Refused(unknown)
        lr = location_routing
        insert_: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        for item in sorted(items, key=lambda it: ids[it.location_code]):
            values: dict[str, Any] = {}
            if not isinstance(item.daily_order_capacity, _Unset):
                values["daily_order_capacity"] = item.daily_order_capacity
            if not isinstance(item.shipping_cost, _Unset):
                values["shipping_cost"] = item.shipping_cost
            stmt = insert_(lr).values(location_id=ids[item.location_code], **values)
            if values:
                stmt = stmt.on_conflict_do_update(index_elements=[lr.c.tenant_id, lr.c.location_id], set_=values)
            else:
                stmt = stmt.on_conflict_do_nothing()
            await conn.execute(stmt)
        return await _settings_views(conn, ctx.clock(), codes)

    return await ctx.db.write(work, notify=False)


async def _settings_views(conn: AsyncConnection, now: datetime, codes: list[str]) -> list[LocationRoutingView]:
    lr, ldo = location_routing, location_daily_orders
    rows = {
        r.code: r
        for r in await conn.execute(
            select(locations.c.code, lr.c.daily_order_capacity, lr.c.shipping_cost, ldo.c.orders)
            .outerjoin(lr, lr.c.location_id == locations.c.id)
            .outerjoin(ldo, and_(ldo.c.location_id == locations.c.id, ldo.c.day == _day(now)))
            .where(locations.c.code.in_(codes))
        )
    }
    return [
        LocationRoutingView(
            location_code=c,
            daily_order_capacity=rows[c].daily_order_capacity,
            shipping_cost=Decimal(rows[c].shipping_cost) if rows[c].shipping_cost is not None else None,
            orders_today=int(rows[c].orders or 0),
        )
        for c in codes
    ]


async def location_routing_settings(ctx: Ctx, codes: list[str] | None) -> list[LocationRoutingView]:
    async with ctx.db.read() as conn:
        if codes is None:
            codes = [r.code for r in await conn.execute(select(locations.c.code).order_by(locations.c.code))]
        else:
            known = {r.code for r in await conn.execute(select(locations.c.code).where(locations.c.code.in_(codes)))}
            codes = [c for c in codes if c in known]
        return await _settings_views(conn, ctx.clock(), codes)
