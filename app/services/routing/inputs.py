"""What the router sees: the request checked, and the candidates (every location with what it can sell
now of the order's SKUs) read in three statements."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import routing as routing_db
from app.db.tables import channels, skus
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import RequestedLine, key_and_cart_errors, validate_lines
from app.domain.routing import (
    Candidate,
    GeoPoint,
    OrderLine,
    RoutingDecision,
    RoutingRequest,
    RoutingStrategy,
)

log = logging.getLogger("stockwire.routing")


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


@dataclass(slots=True)
class Inputs:
    sku_ids: dict[str, int]  # sku code -> id
    location_ids: dict[str, int]  # location code -> id
    candidates: list[Candidate]
    ranking: tuple[RoutingStrategy, ...] | None
    channel_backorder_limit: int | None


def day(now: datetime) -> str:
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


def validate(req: RouteOrderRequest, max_units: int) -> tuple[list[UserError], GeoPoint | None]:
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
    errors += key_and_cart_errors(req.key, req.cart_ref)
    destination = None
    if req.destination is not None:
        try:
            destination = GeoPoint(*req.destination)
        except ValueError as exc:
            errors.append(UserError(ErrorCode.INVALID_INPUT, str(exc), ("destination",)))
    return errors, destination


async def load(conn: AsyncConnection, req: RouteOrderRequest, now: datetime) -> Inputs:
    """Everything routing needs, read in three statements (SKUs, the channel, and the candidates)."""
    codes = {ln.sku_code for ln in req.lines}
    found = {
        r.code: (r.id, r.active)
        for r in await conn.execute(select(skus.c.id, skus.c.code, skus.c.active).where(skus.c.code.in_(codes)))
    }
    errors = sku_errors(req, found)
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

    code_of_sku = {sku_id: code for code, (sku_id, _) in found.items()}
    rows = await routing_db.candidate_rows(conn, code_of_sku, day(now), channel.id if channel is not None else None)
    fenced: dict[tuple[str, int], int] = {}
    if channel is not None:
        fenced = await routing_db.fenced_for_others(conn, channel.id, code_of_sku)
    return _inputs(
        found,
        rows,
        fenced,
        _parse_ranking(channel.routing_ranking) if channel is not None else None,
        channel.backorder_limit if channel is not None else None,
    )


async def load_on(
    db: asyncpg.Connection, req: RouteOrderRequest, now: datetime, found: dict[str, tuple[int, bool]]
) -> Inputs:
    """`load` of an order without a channel on the asyncpg connection, its SKUs already looked up
    (`found`: code -> (id, active), as routing_db.open_order gives them): the candidate read only."""
    if req.channel_code is not None:
        raise ValueError("load_on: an order under a channel is loaded by `load`")
    errors = sku_errors(req, found)
    if errors:
        raise Refused(errors)
    code_of_sku = {sku_id: code for code, (sku_id, _) in found.items()}
    rows = await routing_db.candidate_rows_on(db, code_of_sku, day(now))
    return _inputs(found, rows, {}, None, None)


def sku_errors(req: RouteOrderRequest, found: dict[str, tuple[int, bool]]) -> list[UserError]:
    """UNKNOWN_SKU / INACTIVE_SKU for the order's lines (`found`: code -> (id, active))."""
    errors: list[UserError] = []
    for i, ln in enumerate(req.lines):
        sku = found.get(ln.sku_code)
        where = ("lines", str(i), "skuCode")
        if sku is None:
            errors.append(UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {ln.sku_code!r}", where))
        elif not sku[1]:
            errors.append(UserError(ErrorCode.INACTIVE_SKU, f"SKU {ln.sku_code!r} is deactivated", where))
    return errors


def _inputs(
    found: dict[str, tuple[int, bool]],
    rows: list[routing_db.CandidateRow],
    fenced: dict[tuple[str, int], int],
    ranking: tuple[RoutingStrategy, ...] | None,
    backorder_limit: int | None,
) -> Inputs:
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
    return Inputs(
        sku_ids={code: sku_id for code, (sku_id, _) in found.items()},
        location_ids=location_ids,
        candidates=candidates,
        ranking=ranking,
        channel_backorder_limit=backorder_limit,
    )


def routing_request(req: RouteOrderRequest, setting: Inputs, destination: GeoPoint | None) -> RoutingRequest:
    return RoutingRequest(
        lines=tuple(OrderLine(ln.sku_code, ln.quantity) for ln in req.lines),
        destination=destination,
        ranking=setting.ranking,
        allow_split=req.allow_split,
    )


def unserved_errors(req: RouteOrderRequest, decision: RoutingDecision) -> list[UserError]:
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
