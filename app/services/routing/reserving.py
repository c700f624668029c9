"""routeAndReserve: route an order over live stock, then hold the routed stock in the same transaction.

Race-safe by construction: it reads each candidate's stock, routes with the pure
`app.domain.routing.route`, then holds every planned (sku, location, units) in one conditional UPDATE
(`app.db.routing.hold_planned`, under the same condition as `stock.hold`) and counts the order against
each shipping location's daily capacity with a conditional UPSERT. There is no Python check before a
write: if a hold or a capacity slot is gone when the database applies it (another order took it since
the read), the whole transaction rolls back and routing runs again on a fresh read, up to `_MAX_ROUTES`
times; the loser of a race is thus routed to the next location or refused with INSUFFICIENT_STOCK.
Under a channel the routed lines are held through `channels.hold_under_channel`, as `reserve` with a
channelCode does: the channel's figure bounds each SKU, the hold counts in the channel's holds, and what
no location can serve is backordered when the channel's allowance covers it.

An order without a channel or cart is first tried on the pooled asyncpg connection in five round trips
(`_route_and_hold_on`: the same promises, one statement for all the writes); what that path does not
handle rolls back and is answered by the general path above (`DRIVER_PATH` switches it off).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import routing as routing_db
from app.db import stock
from app.db.engine import is_unique_violation, note_changed
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import RequestedLine, ReservationStatus, lines_fingerprint, validate_ttl
from app.domain.routing import GeoPoint, RoutingDecision, Shipment, ShipmentLine, route
from app.services import channels as channels_service
from app.services import demand, reservations
from app.services.context import Ctx
from app.services.reservations.records import reserved_row
from app.services.routing import decisions, inputs
from app.services.routing.decisions import OUTCOME_REFUSED, OUTCOME_RESERVED, DecisionView, decision_view
from app.services.routing.inputs import Inputs, RouteOrderRequest
from app.services.views import ReservationLineView, ReservationView

log = logging.getLogger("stockwire.routing")

# Routing runs again on a fresh read when a hold or a capacity slot was taken since the read; each
# retry sees the winner's commit, so a few are enough even for a hot SKU.
_MAX_ROUTES = 8


@dataclass(frozen=True, slots=True)
class RouteAndReserveResult:
    decision: DecisionView | None
    reservation: ReservationView | None
    errors: tuple[UserError, ...]


class _Contended(Exception):
    """A planned hold or capacity slot was taken since the read: roll back and route again."""


class _RefusedAfterRouting(Refused):
    """Refused with a decision worth keeping (stored after the rollback), and the inputs it was made on:
    the candidates as the router saw them, not as a later read would find them."""

    def __init__(self, errors: list[UserError], decision: DecisionView, request: dict[str, Any]) -> None:
        super().__init__(errors)
        self.decision = decision
        self.request = request


def _fingerprint(req: RouteOrderRequest) -> str:
    """Same key, same order: lines, channel and cart as for reserve, plus what routing depends on."""
    base = lines_fingerprint(req.lines, req.channel_code, req.cart_ref)
    extra = f"route\x1f{req.order_ref}\x1f{req.destination}\x1f{req.allow_split}"
    return hashlib.sha256(f"{base}\x1e{extra}".encode()).hexdigest()


async def route_and_reserve(ctx: Ctx, req: RouteOrderRequest) -> RouteAndReserveResult:
    """Route, then hold the routed stock in the same transaction: every line or nothing, idempotent."""
    s = ctx.settings
    errors, destination = inputs.validate(req, s.max_units_per_reservation)
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

    if DRIVER_PATH and req.channel_code is None and req.cart_ref is None and time.monotonic() >= _no_dynamic_until():

        async def on_driver(db: asyncpg.Connection) -> tuple[DecisionView, ReservationView]:
            return await _route_and_hold_on(db, ctx, req, destination, ttl, fingerprint)

        try:
            decision, view = await ctx.db.write_driver(on_driver)
            return RouteAndReserveResult(decision, view, ())
        except (_Elsewhere, _Contended):
            pass  # rolled back, nothing of it stays: routed the general way below, on a fresh read
        except _RefusedAfterRouting as refused:
            stored = await decisions.store_refusal(ctx, refused.decision, refused.request)
            return RouteAndReserveResult(stored, None, tuple(refused.errors))
        except Refused as refused:
            return RouteAndReserveResult(None, None, tuple(refused.errors))
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # a concurrent call with the same key won the insert: the general path answers the repeat

    for attempt in range(1, _MAX_ROUTES + 1):  # `work` reads `attempt`
        try:
            decision, view = await ctx.db.write(work)
        except _Contended:
            log.info("routing %s again: stock or capacity taken since the read (attempt %d)", req.order_ref, attempt)
            continue
        except _RefusedAfterRouting as refused:
            stored = await decisions.store_refusal(ctx, refused.decision, refused.request)
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
    stored = await decisions.decision_for_reservation(conn, row.id)
    # a key used by reserve (no decision) or by another order is not this order's key
    view = await reservations.repeat(
        conn, ctx.clock(), row, fingerprint, same_operation=stored is not None, used_for="order or reservation"
    )
    assert stored is not None
    return stored, view


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

    setting = await inputs.load(conn, req, now)
    routing = inputs.routing_request(req, setting, destination)
    decision = route(routing, setting.candidates)
    if decision.unserved:
        # holds past their expiry never block an order, even before the sweeper runs: given back here,
        # waiting for a sweeper that is expiring one right now rather than skipping it (as reserve
        # does), then read again even when the sweeper was first (it may have committed since our read:
        # refused on that read, the order would have been refused for units already given back)
        await reservations.expire_due(conn, now, sku_ids=list(setting.sku_ids.values()), wait=True)
        setting = await inputs.load(conn, req, now)
        decision = route(routing, setting.candidates)
    if decision.unserved and (req.channel_code is None or setting.channel_backorder_limit is None):
        errors = inputs.unserved_errors(req, decision)
        raise _RefusedAfterRouting(
            errors,
            decision_view(req, routing, decision, OUTCOME_REFUSED, errors, now),
            decisions.request_record(req, setting, destination),
        )

    loc_ids = setting.location_ids
    backordered: dict[stock.Pair, int] = {}
    preordered: dict[stock.Pair, int] = {}  # backordered units sold before the SKU's launch
    if req.channel_code is None:
        plan = sorted(
            ((setting.sku_ids[ln.sku_code], loc_ids[s.location_code]), ln.quantity)
            for s in decision.shipments
            for ln in s.lines
        )
        held = dict(plan)
        versions = await routing_db.hold_planned(conn, now, plan)
        if versions is None:
            raise _Contended  # someone took units since the read: the transaction rolls back, we route again
        holds = [(pair, q, versions[pair]) for pair, q in plan]
    else:
        try:
            held, holds, backordered, preordered = await _hold_under_channel(
                conn, now, req.channel_code, setting, decision
            )
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
                decision_view(req, routing, decision, OUTCOME_REFUSED, errors, now, reason),
                decisions.request_record(req, setting, destination),
            ) from refused
        decision = _as_held(decision, setting, held, backordered)
    # a location counts an order when it ships stock today; backordered units ship when they arrive
    shipping = sorted({pair[1] for pair, q in held.items() if q})
    # after the holds: the per-location day row is a hot spot, so its lock is held for as short a time
    # as possible; stock rows then day rows, each in id order, so two orders cannot deadlock
    await _count_orders(conn, now, shipping, setting)
    await reservations.record_holds(
        conn, now, rid, held, holds, reference=req.order_ref, backordered=backordered, preordered=preordered
    )

    view = replace(
        decision_view(req, routing, decision, OUTCOME_RESERVED, [], now), backorders=_backorders(setting, backordered)
    )
    view = await decisions.store(conn, view, decisions.request_record(req, setting, destination), rid, ctx.actor.key_id)
    reservation = (await reservations.load_views(conn, now, [rid]))[0]
    return view, reservation


# The driver path (`_route_and_hold_on`) can be switched off: every order then goes the general way.
DRIVER_PATH = True
# a hold that found a dynamic channel buffer sends orders the general way for a while (moving buffers
# needs it): a deployment with dynamic buffers does not pay for every order twice
_DYNAMIC_HOLD_OFF = 60.0
_dynamic_seen = [float("-inf")]


def _no_dynamic_until() -> float:
    return _dynamic_seen[0] + _DYNAMIC_HOLD_OFF


class _Elsewhere(Exception):
    """The driver path leaves this order to the general one (its transaction rolls back)."""


async def _route_and_hold_on(
    db: asyncpg.Connection,
    ctx: Ctx,
    req: RouteOrderRequest,
    destination: GeoPoint | None,
    ttl: int,
    fingerprint: str,
) -> tuple[DecisionView, ReservationView]:
    """`_route_and_hold` for an order without a channel or cart, on the asyncpg connection of
    `Database.write_driver`, in five round trips: BEGIN (with the tenant), the key's claim with the
    SKUs' look-up and an expired-hold probe (routing_db.open_order), the candidate read, one statement
    writing everything (routing_db.hold_order: holds, day counts, lines, ledger, outbox, sale, decision),
    COMMIT. The same promises: the key claimed first, every hold conditional in the database, the
    answer built from what was written. What only the general path does (answer a repeat of the key,
    give back expired holds when they would change the routing, move dynamic buffers) raises
    `_Elsewhere`; a hold or capacity taken since the read raises `_Contended`. Either rolls back."""
    now = ctx.clock()
    expires_at = now + timedelta(seconds=ttl)
    opened = await routing_db.open_order(
        db,
        now,
        expires_at,
        req.idempotency_scope,
        req.key,
        fingerprint,
        req.order_ref,
        ctx.actor.key_id,
        sorted({ln.sku_code for ln in req.lines}),
    )
    rid = opened.reservation_id
    if rid is None:
        raise _Elsewhere  # a repeat of the key (or another call's): answered by the general path
    setting = await inputs.load_on(db, req, now, opened.skus)
    routing = inputs.routing_request(req, setting, destination)
    decision = route(routing, setting.candidates)
    if decision.unserved:
        if opened.expired_due:
            raise _Elsewhere  # holds past their expiry never block an order: the general path gives them back
        errors = inputs.unserved_errors(req, decision)
        raise _RefusedAfterRouting(
            errors,
            decision_view(req, routing, decision, OUTCOME_REFUSED, errors, now),
            decisions.request_record(req, setting, destination),
        )
    loc_ids = setting.location_ids
    plan = sorted(
        ((setting.sku_ids[ln.sku_code], loc_ids[s.location_code]), ln.quantity)
        for s in decision.shipments
        for ln in s.lines
    )
    capacity = {loc_ids[c.location_code]: c.daily_capacity for c in setting.candidates}
    shipping = {pair[1] for pair, q in plan if q}
    view = decision_view(req, routing, decision, OUTCOME_RESERVED, [], now)
    request = decisions.request_record(req, setting, destination)
    request_json, decision_json = decisions.encoded(view, request)
    held = await routing_db.hold_order(
        db,
        now,
        rid,
        plan,
        {i: capacity.get(i) for i in shipping},
        inputs.day(now),
        demand.half_life_seconds(),
        (req.order_ref, request_json, decision_json, ctx.actor.key_id),
        reserved_row((0, 0), 0, 0, now, rid, req.order_ref),
    )
    if not held.done:
        raise _Contended  # a position's units or a location's capacity went since the read
    if held.dynamic:
        _dynamic_seen[0] = time.monotonic()
        raise _Elsewhere
    note_changed([pair for pair, _ in plan])  # the relay's hint, as stock.enqueue_changes gives it
    code_of_sku = {i: c for c, i in setting.sku_ids.items()}
    code_of_loc = {i: c for c, i in loc_ids.items()}
    # in (SKU code, location code) order, as load_views reads them back: the database's collation is
    # C.UTF-8 (code point order, Python's string order)
    lines = [
        ReservationLineView(sku, loc, q)
        for sku, loc, q in sorted((code_of_sku[p[0]], code_of_loc[p[1]], q) for p, q in plan)
    ]
    reservation = ReservationView(
        id=rid,
        status=ReservationStatus.ACTIVE,
        expires_at=expires_at,
        created_at=now,
        cart_ref=None,
        order_ref=req.order_ref,
        channel_code=None,
        lines=tuple(lines),
    )
    return replace(view, id=held.decision_id, reservation_id=rid, request=request), reservation


async def _count_orders(conn: AsyncConnection, now: datetime, location_ids: list[int], setting: Inputs) -> None:
    """One order per shipping location (and shared site) today; one whose capacity filled since the
    read is contended (each count's condition is checked by the database, under the row's lock)."""
    capacity = {setting.location_ids[c.location_code]: c.daily_capacity for c in setting.candidates}
    if not await routing_db.count_orders(conn, {i: capacity.get(i) for i in location_ids}, inputs.day(now)):
        raise _Contended  # a location, or a shared site with other tenants' orders, filled up since the read


async def _hold_under_channel(
    conn: AsyncConnection, now: datetime, channel_code: str, setting: Inputs, decision: RoutingDecision
) -> tuple[dict[stock.Pair, int], list[stock.Hold], dict[stock.Pair, int], dict[stock.Pair, int]]:
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
    backordered = {p: q for p, q in taken.backordered.items() if q}
    # of those, the units sold as preorders (the SKU not launched yet): recorded on the lines so a
    # release or expiry gives them back to the SKU's preorder limit, as reserve's do
    return dict(taken.held), taken.holds, backordered, dict(taken.preordered)


@dataclass(frozen=True, slots=True)
class _Id:
    id: int


def _as_held(
    decision: RoutingDecision, setting: Inputs, held: dict[stock.Pair, int], backordered: dict[stock.Pair, int]
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


def _backorders(setting: Inputs, backordered: dict[stock.Pair, int]) -> tuple[Shipment, ...]:
    code_of_sku = {i: c for c, i in setting.sku_ids.items()}
    code_of_loc = {i: c for c, i in setting.location_ids.items()}
    by_location: dict[str, list[ShipmentLine]] = {}
    for (sku_id, loc_id), q in sorted(backordered.items()):
        by_location.setdefault(code_of_loc[loc_id], []).append(ShipmentLine(code_of_sku[sku_id], q))
    return tuple(Shipment(code, tuple(sorted(lines))) for code, lines in sorted(by_location.items()))
