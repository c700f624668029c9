"""Routing decisions: what routeOrder and routeAndReserve answer, and how a routeAndReserve decision is
stored with its inputs (the candidates' stock as seen) and read back.

Every routeAndReserve that got as far as routing is stored: RESERVED with its reservation id, or
REFUSED (stored in its own small transaction after the refused one rolled back, so "why was this order
refused?" can be answered too). routeOrder dry runs are not stored: a query must have no side effects,
and storing would add a write to every quote a storefront asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import routing_decisions
from app.domain.errors import ErrorCode, UserError
from app.domain.routing import (
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
)
from app.services.context import Ctx
from app.services.routing.inputs import Inputs, RouteOrderRequest

OUTCOME_DRY_RUN = "DRY_RUN"
OUTCOME_RESERVED = "RESERVED"
OUTCOME_REFUSED = "REFUSED"


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


def decision_view(
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


def request_record(req: RouteOrderRequest, setting: Inputs, destination: GeoPoint | None) -> dict[str, Any]:
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


# one encoder for every stored decision: json.dumps with `separators` builds a new one per call
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def encoded(view: DecisionView, request: dict[str, Any]) -> tuple[str, str]:
    """The stored form of a decision: (its inputs' JSON, the decision's JSON)."""
    return _COMPACT.encode(request), _COMPACT.encode(_decision_record(view))


async def store(
    conn: AsyncConnection,
    view: DecisionView,
    request: dict[str, Any],
    reservation_id: str | None,
    owner_key_id: str | None,
) -> DecisionView:
    request_json, decision_json = encoded(view, request)
    new_id = await conn.scalar(
        insert(routing_decisions)
        .values(
            order_ref=view.order_ref,
            channel_code=view.channel_code,
            reservation_id=reservation_id,
            owner_key_id=owner_key_id,
            request=request_json,
            decision=decision_json,
            created_at=view.created_at,
        )
        .returning(routing_decisions.c.id)
    )
    return replace(view, id=int(new_id or 0), reservation_id=reservation_id, request=request)


async def store_refusal(ctx: Ctx, view: DecisionView, request: dict[str, Any]) -> DecisionView:
    """Keep a refused decision with the inputs it was routed on (the refused transaction changed nothing).

    `request` was recorded from the routing's own read: a fresh read here would store stock that
    other transactions moved since, and the decision would no longer follow from its inputs."""

    async def work(conn: AsyncConnection) -> DecisionView:
        return await store(conn, view, request, None, ctx.actor.key_id)

    # a write that publishes nothing: no listener needs waking
    return await ctx.db.write(work, notify=False)


async def decision_for_reservation(conn: AsyncConnection, reservation_id: str) -> DecisionView | None:
    """The latest decision that made this reservation; None for one made by reserve."""
    row = (
        await conn.execute(
            select(routing_decisions)
            .where(routing_decisions.c.reservation_id == reservation_id)
            .order_by(routing_decisions.c.id.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else _decision_from_row(row)


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
