"""Mutations: parse input, call one service, map the result. Expected failures become userErrors."""

from __future__ import annotations

import strawberry

from app.domain.errors import Refused
from app.domain.events import EventType
from app.domain.events import InventoryEvent as DomainEvent
from app.domain.reservations import RequestedLine
from app.graphql import b2b
from app.graphql.context import Context
from app.graphql.inputs import InventoryEventInput, LocationInput, ReserveInput, SkuInput, given, nulled
from app.graphql.permissions import acting, idempotency_scope
from app.graphql.types import (
    EventResult,
    Location,
    RecordInventoryEventsPayload,
    Reservation,
    ReservationPayload,
    ReservePayload,
    Sku,
    UpsertLocationsPayload,
    UpsertSkusPayload,
    UserError,
)
from app.services import catalog, events, reservations

Info = strawberry.Info[Context, None]


def _errors(refused: Refused) -> list[UserError]:
    return [UserError.of(e) for e in refused.errors]


def _event(i: InventoryEventInput) -> DomainEvent:
    return DomainEvent(
        source=i.source,
        external_id=i.external_id,
        type=EventType(i.type),
        sku_code=i.sku_code,
        location_code=i.location_code,
        quantity=i.quantity,
        occurred_at=i.occurred_at,
        reason=i.reason,
        reference=i.reference,
        to_location_code=i.to_location_code,
        expected_at=i.expected_at,
        unit=i.unit,
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create or update SKUs by code; omitted fields keep their stored value")
    async def upsert_skus(self, info: Info, input: list[SkuInput]) -> UpsertSkusPayload:
        items = [catalog.SkuInput(code=i.code, name=i.name, active=i.active) for i in input]
        try:
            views = await catalog.upsert_skus(info.context.ctx, items)
        except Refused as r:
            return UpsertSkusPayload(skus=[], user_errors=_errors(r))
        return UpsertSkusPayload(skus=[Sku.of(v) for v in views], user_errors=[])

    @strawberry.mutation(description="Create or update locations by code; omitted fields keep their stored value")
    async def upsert_locations(self, info: Info, input: list[LocationInput]) -> UpsertLocationsPayload:
        items = [
            catalog.LocationInput(
                code=i.code,
                name=i.name,
                kind=catalog.LocationKind(i.kind),
                latitude=i.latitude,
                longitude=i.longitude,
                priority=i.priority,
                active=i.active,
                count_authority=given(i.count_authority),
                cleared=nulled(i, catalog.CLEARABLE),
            )
            for i in input
        ]
        try:
            views = await catalog.upsert_locations(info.context.ctx, items)
        except Refused as r:
            return UpsertLocationsPayload(locations=[], user_errors=_errors(r))
        return UpsertLocationsPayload(locations=[Location.of(v) for v in views], user_errors=[])

    @strawberry.mutation(
        description="Record events from a source system. All-or-nothing unless atomic is false, "
        "in which case events with errors are skipped and reported, and the rest apply."
    )
    async def record_inventory_events(
        self, info: Info, input: list[InventoryEventInput], atomic: bool = True
    ) -> RecordInventoryEventsPayload:
        try:
            results, errors = await events.record_events(info.context.ctx, [_event(i) for i in input], atomic)
        except Refused as r:
            return RecordInventoryEventsPayload(results=[], user_errors=_errors(r))
        return RecordInventoryEventsPayload(
            results=[EventResult(index=r.index, status=r.status, version=r.version, drift=r.drift) for r in results],
            user_errors=[UserError.of(e) for e in errors],
        )

    @strawberry.mutation(description="Hold stock for a checkout: every line or nothing, until expiresAt")
    async def reserve(self, info: Info, input: ReserveInput) -> ReservePayload:
        request = reservations.ReserveRequest(
            lines=[RequestedLine(ln.sku_code, ln.quantity, ln.location_code) for ln in input.lines],
            idempotency_key=input.idempotency_key,
            ttl_seconds=input.ttl_seconds,
            channel_code=input.channel_code,
            cart_ref=input.cart_ref,
            idempotency_scope=idempotency_scope(info),  # per API key
        )
        try:
            request = await b2b.reserve_request(info, input, request)  # issue 19: units, account, partial
            view = await reservations.reserve(acting(info), request)
        except Refused as r:
            return ReservePayload(reservation=None, user_errors=_errors(r))
        outcomes = b2b.line_outcomes(input, request.lines, view)
        return ReservePayload(reservation=Reservation.of(view), user_errors=[], lines=outcomes)

    @strawberry.mutation(description="An order was placed: the held units become committed")
    async def commit_reservation(self, info: Info, id: strawberry.ID, order_ref: str) -> ReservationPayload:
        try:
            view = await reservations.commit(acting(info), str(id), order_ref)
        except Refused as r:
            return ReservationPayload(reservation=None, user_errors=_errors(r))
        return ReservationPayload(reservation=Reservation.of(view), user_errors=[])

    @strawberry.mutation(description="Give the held units back")
    async def release_reservation(self, info: Info, id: strawberry.ID) -> ReservationPayload:
        try:
            view = await reservations.release(acting(info), str(id))
        except Refused as r:
            return ReservationPayload(reservation=None, user_errors=_errors(r))
        return ReservationPayload(reservation=Reservation.of(view), user_errors=[])

    @strawberry.mutation(description="Keep the hold: expiresAt becomes now + ttlSeconds")
    async def extend_reservation(self, info: Info, id: strawberry.ID, ttl_seconds: int) -> ReservationPayload:
        try:
            view = await reservations.extend(acting(info), str(id), ttl_seconds)
        except Refused as r:
            return ReservationPayload(reservation=None, user_errors=_errors(r))
        return ReservationPayload(reservation=Reservation.of(view), user_errors=[])
