"""Order routing over GraphQL: routeOrder (dry run), routeAndReserve, routingDecisions, and the
per-location routing settings. Thin: parse input, call app.services.routing, map the result."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import cast

import strawberry
from strawberry.scalars import JSON

from app.domain.errors import Refused
from app.domain.reservations import RequestedLine
from app.domain.routing import Exclusion, RoutingStrategy
from app.domain.routing import Shipment as RoutedShipment
from app.graphql.context import Context
from app.graphql.inputs import ReserveLineInput
from app.graphql.permissions import acting, idempotency_scope
from app.graphql.types import Reservation, ReservationLine, UserError
from app.services import routing

Info = strawberry.Info[Context, None]


class RoutingOutcome(StrEnum):
    DRY_RUN = routing.OUTCOME_DRY_RUN
    RESERVED = routing.OUTCOME_RESERVED
    REFUSED = routing.OUTCOME_REFUSED


strawberry.enum(RoutingStrategy, name="RoutingStrategy", description="A routing rule a channel may rank")
strawberry.enum(Exclusion, name="RoutingExclusion", description="Why a location took no part in routing")
strawberry.enum(RoutingOutcome, name="RoutingOutcome")


@strawberry.input
class GeoPointInput:
    latitude: float
    longitude: float


@strawberry.input
class RouteOrderInput:
    order_ref: str
    lines: list[ReserveLineInput]
    channel_code: str | None = None
    idempotency_key: str | None = strawberry.field(default=None, description="Defaults to orderRef")
    destination: GeoPointInput | None = None
    cart_ref: str | None = strawberry.field(
        default=None, description="The checkout's cart: its active holds are moved to the routed locations"
    )
    ttl_seconds: int | None = strawberry.field(default=None, description="routeAndReserve: how long to hold")
    allow_split: bool = strawberry.field(default=True, description="false: ship from one location at most")


@strawberry.type
class Shipment:
    location_code: str
    lines: list[ReservationLine]


@strawberry.type
class LineAllocation:
    location_code: str
    quantity: int


@strawberry.type(description="One order line: where its units ship from, and what could not be routed")
class RoutedLine:
    sku_code: str
    quantity: int
    allocations: list[LineAllocation]
    unserved_quantity: int
    backordered: list[LineAllocation] = strawberry.field(
        description="Units held against incoming stock under the channel's backorder allowance, per location"
    )


@strawberry.type(description="How the router saw one location when the order arrived")
class RoutingCandidate:
    location_code: str
    rank: int | None = strawberry.field(description="1 = preferred first; null when excluded")
    excluded: Exclusion | None
    covers_lines: int = strawberry.field(description="Lines it could ship in full")
    covers_units: int = strawberry.field(description="Units of the order it held")
    distance_km: float | None
    priority: int
    shipping_cost: Decimal | None


@strawberry.type
class RoutingDecision:
    shipments: list[Shipment]
    user_errors: list[UserError]
    lines: list[RoutedLine]
    backorders: list[Shipment] = strawberry.field(
        description="What the channel's backorder allowance holds against incoming stock, per location"
    )
    candidates: list[RoutingCandidate]
    reason: str = strawberry.field(description="Why these locations, in a sentence")
    ranking: list[RoutingStrategy] = strawberry.field(description="The strategies applied, first ranked first")
    outcome: RoutingOutcome
    order_ref: str
    channel_code: str | None
    id: strawberry.ID | None = strawberry.field(description="The stored decision; null for a dry run")
    reservation_id: strawberry.ID | None
    created_at: datetime
    request: JSON | None = strawberry.field(description="The inputs as stored, with each candidate's stock as seen")

    @classmethod
    def of(cls, v: routing.DecisionView) -> RoutingDecision:
        allocations: dict[str, list[LineAllocation]] = {ln.sku_code: [] for ln in v.lines}
        for s in v.shipments:
            for sl in s.lines:
                allocations[sl.sku_code].append(LineAllocation(location_code=s.location_code, quantity=sl.quantity))
        backordered: dict[str, list[LineAllocation]] = {ln.sku_code: [] for ln in v.lines}
        for s in v.backorders:
            for sl in s.lines:
                backordered[sl.sku_code].append(LineAllocation(location_code=s.location_code, quantity=sl.quantity))
        missing = {u.sku_code: u.missing_quantity for u in v.unserved}
        return cls(
            shipments=[_shipment(s) for s in v.shipments],
            backorders=[_shipment(s) for s in v.backorders],
            user_errors=[UserError.of(e) for e in v.errors],
            lines=[
                RoutedLine(
                    sku_code=ln.sku_code,
                    quantity=ln.quantity,
                    allocations=allocations[ln.sku_code],
                    unserved_quantity=missing.get(ln.sku_code, 0),
                    backordered=backordered[ln.sku_code],
                )
                for ln in v.lines
            ],
            candidates=[
                RoutingCandidate(
                    location_code=c.location_code,
                    rank=c.rank,
                    excluded=c.excluded_reason,
                    covers_lines=c.covers_lines,
                    covers_units=c.covers_units,
                    distance_km=None if c.distance_km is None else round(c.distance_km, 3),
                    priority=c.priority,
                    shipping_cost=c.shipping_cost,
                )
                for c in v.candidates
            ],
            reason=v.reason,
            ranking=list(v.ranking),
            outcome=RoutingOutcome(v.outcome),
            order_ref=v.order_ref,
            channel_code=v.channel_code,
            id=None if v.id is None else strawberry.ID(str(v.id)),
            reservation_id=None if v.reservation_id is None else strawberry.ID(v.reservation_id),
            created_at=v.created_at,
            request=cast(JSON, v.request),
        )

    @classmethod
    def refused(
        cls, errors: list[UserError], order_ref: str, channel_code: str | None, now: datetime
    ) -> RoutingDecision:
        """Input that never reached the router: no shipments, just the reasons."""
        return cls(
            shipments=[],
            backorders=[],
            user_errors=errors,
            lines=[],
            candidates=[],
            reason="not routed: the input was refused",
            ranking=[],
            outcome=RoutingOutcome.REFUSED,
            order_ref=order_ref,
            channel_code=channel_code,
            id=None,
            reservation_id=None,
            created_at=now,
            request=None,
        )


def _shipment(s: RoutedShipment) -> Shipment:
    return Shipment(
        location_code=s.location_code,
        lines=[
            ReservationLine(sku_code=ln.sku_code, location_code=s.location_code, quantity=ln.quantity) for ln in s.lines
        ],
    )


@strawberry.type
class RouteAndReservePayload:
    decision: RoutingDecision | None
    reservation: Reservation | None
    user_errors: list[UserError]


@strawberry.input(description="Omit a field to keep its stored value; null clears it")
class LocationRoutingInput:
    location_code: str
    daily_order_capacity: int | None = strawberry.field(
        default=strawberry.UNSET, description="Orders per UTC day; null: unlimited"
    )
    shipping_cost: Decimal | None = strawberry.field(
        default=strawberry.UNSET, description="Per shipment, for LOWEST_COST; null: unknown (ranked last)"
    )


@strawberry.type
class LocationRouting:
    location_code: str
    daily_order_capacity: int | None
    shipping_cost: Decimal | None
    orders_today: int = strawberry.field(description="Orders routed to ship from here today (UTC)")

    @classmethod
    def of(cls, v: routing.LocationRoutingView) -> LocationRouting:
        return cls(
            location_code=v.location_code,
            daily_order_capacity=v.daily_order_capacity,
            shipping_cost=v.shipping_cost,
            orders_today=v.orders_today,
        )


@strawberry.type
class SetLocationRoutingPayload:
    settings: list[LocationRouting]
    user_errors: list[UserError]


def _request(i: RouteOrderInput, idempotency_scope: str = "") -> routing.RouteOrderRequest:
    return routing.RouteOrderRequest(
        order_ref=i.order_ref,
        lines=[RequestedLine(ln.sku_code, ln.quantity, ln.location_code) for ln in i.lines],
        channel_code=i.channel_code,
        idempotency_key=i.idempotency_key,
        destination=None if i.destination is None else (i.destination.latitude, i.destination.longitude),
        cart_ref=i.cart_ref,
        ttl_seconds=i.ttl_seconds,
        allow_split=i.allow_split,
        idempotency_scope=idempotency_scope,
    )


def _kept(value: object) -> object:
    return routing.UNSET if value is strawberry.UNSET else value


@strawberry.type
class RoutingQuery:
    @strawberry.field(description="Where an order would ship from now: a dry run that holds and stores nothing")
    async def route_order(self, info: Info, input: RouteOrderInput) -> RoutingDecision:
        ctx = info.context.ctx
        try:
            view = await routing.route_order(ctx, _request(input))
        except Refused as r:
            errors = [UserError.of(e) for e in r.errors]
            return RoutingDecision.refused(errors, input.order_ref, input.channel_code, ctx.clock())
        return RoutingDecision.of(view)

    @strawberry.field(
        description="Stored routing decisions for an order reference, oldest first: the ones this key made "
        "(an admin key: every key's)"
    )
    async def routing_decisions(self, info: Info, order_ref: str) -> list[RoutingDecision]:
        return [RoutingDecision.of(v) for v in await routing.decisions_for_order(acting(info), order_ref)]

    @strawberry.field(description="Per-location routing settings (all locations when codes is omitted)")
    async def location_routing(self, info: Info, codes: list[str] | None = None) -> list[LocationRouting]:
        return [LocationRouting.of(v) for v in await routing.location_routing_settings(info.context.ctx, codes)]


@strawberry.type
class RoutingMutation:
    @strawberry.mutation(
        description="Route an order and hold the routed stock in one transaction: every line or nothing. "
        "Idempotent by idempotencyKey (default orderRef)."
    )
    async def route_and_reserve(self, info: Info, input: RouteOrderInput) -> RouteAndReservePayload:
        # idempotency keys are per API key, as for reserve
        request = _request(input, idempotency_scope(info))
        result = await routing.route_and_reserve(acting(info), request)
        return RouteAndReservePayload(
            decision=None if result.decision is None else RoutingDecision.of(result.decision),
            reservation=None if result.reservation is None else Reservation.of(result.reservation),
            user_errors=[UserError.of(e) for e in result.errors],
        )

    @strawberry.mutation(description="Set per-location daily order capacity and shipping cost")
    async def set_location_routing(self, info: Info, input: list[LocationRoutingInput]) -> SetLocationRoutingPayload:
        items = [
            routing.LocationRoutingInput(
                location_code=i.location_code,
                daily_order_capacity=_kept(i.daily_order_capacity),  # type: ignore[arg-type]
                shipping_cost=_kept(i.shipping_cost),  # type: ignore[arg-type]
            )
            for i in input
        ]
        try:
            views = await routing.set_location_routing(info.context.ctx, items)
        except Refused as r:
            return SetLocationRoutingPayload(settings=[], user_errors=[UserError.of(e) for e in r.errors])
        return SetLocationRoutingPayload(settings=[LocationRouting.of(v) for v in views], user_errors=[])
