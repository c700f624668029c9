"""GraphQL output types: thin mappings of the services' read models."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import datetime

import dateutil.parser  # type: ignore[import-untyped]  # (no stubs installed; Strawberry depends on it)
import strawberry
from strawberry.schema.types.base_scalars import DateTimeDefinition, wrap_parser

from app.domain.channel_rules import ChannelFigure
from app.domain.errors import UserError as DomainUserError
from app.domain.events import EventStatus as DomainEventStatus
from app.domain.events import EventType, LedgerKind
from app.domain.reservations import ReservationStatus as DomainReservationStatus
from app.services.catalog import LocationKind as DomainLocationKind
from app.services.views import AvailabilityView, LocationView, ReservationView, SkuView, StockLevelView

# The plain ISO 8601 forms integrations send: date, 'T', time to the second with up to 6 fractional
# digits, and Z or a +hh:mm offset. Read by datetime.fromisoformat (C), to the same instant and offset
# as dateutil's isoparse (Strawberry's DateTime parser); everything else, and anything fromisoformat
# refuses (hour 24, say), goes to isoparse, so the accepted inputs and the errors are dateutil's.
_PLAIN_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")


def parse_datetime(value: str) -> datetime:
    """A DateTime input as Strawberry's scalar reads it (dateutil.parser.isoparse), the plain forms
    without dateutil: it was about a quarter of the coercion of a batch of 500 events."""
    if _PLAIN_ISO.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass  # dateutil's answer (a value it reads, or its error)
    parsed: datetime = dateutil.parser.isoparse(value)
    return parsed


# The schema's DateTime (app/graphql/schema.py's scalar_overrides): Strawberry's, with that parser.
# `implementation` is left out so the schema builds its own GraphQLScalarType with it.
DATETIME = dataclasses.replace(
    DateTimeDefinition, parse_value=wrap_parser(parse_datetime, "DateTime"), implementation=None
)

# The domain enums are the GraphQL enums: registered here, so app/domain stays free of Strawberry.
strawberry.enum(EventType, name="InventoryEventType")
strawberry.enum(LedgerKind, name="LedgerEntryKind", description="Reported event types plus Stockwire's own movements")
strawberry.enum(DomainEventStatus, name="EventStatus")
strawberry.enum(DomainReservationStatus, name="ReservationStatus")
strawberry.enum(DomainLocationKind, name="LocationKind")
InventoryEventType = EventType
LedgerEntryKind = LedgerKind
EventStatus = DomainEventStatus
ReservationStatus = DomainReservationStatus
LocationKind = DomainLocationKind


def encode_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_cursor(cursor: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


@strawberry.type(description="A stable, machine-readable reason an operation changed nothing")
class UserError:
    code: str
    message: str
    field: list[str] | None

    @classmethod
    def of(cls, e: DomainUserError) -> UserError:
        return cls(code=e.code.value, message=e.message, field=list(e.field) if e.field else None)


@strawberry.type
class Sku:
    code: str
    name: str
    active: bool
    updated_at: datetime

    @classmethod
    def of(cls, v: SkuView) -> Sku:
        return cls(code=v.code, name=v.name, active=v.active, updated_at=v.updated_at)


@strawberry.type
class Location:
    code: str
    name: str
    kind: LocationKind
    latitude: float | None
    longitude: float | None
    priority: int
    active: bool
    count_authority: str | None = strawberry.field(description="Source whose COUNTED events apply here; null: all")
    updated_at: datetime

    @classmethod
    def of(cls, v: LocationView) -> Location:
        return cls(
            code=v.code,
            name=v.name,
            kind=DomainLocationKind(v.kind),
            latitude=v.latitude,
            longitude=v.longitude,
            priority=v.priority,
            active=v.active,
            count_authority=v.count_authority,
            updated_at=v.updated_at,
        )


@strawberry.type(description="The quantities of one SKU at one location")
class StockLevel:
    sku_code: str
    location_code: str
    on_hand: int
    committed: int
    reserved: int
    unavailable: int
    safety_stock: int
    incoming: int
    available: int = strawberry.field(
        description="onHand - committed - reserved - unavailable - safetyStock; may be negative"
    )
    oversold: int = strawberry.field(description="max(0, committed + reserved + unavailable - onHand)")
    version: int
    updated_at: datetime
    cursor: str = strawberry.field(description="Pass as `after` to continue from this row")

    @classmethod
    def of(cls, v: StockLevelView) -> StockLevel:
        p = v.position
        return cls(
            sku_code=v.sku_code,
            location_code=v.location_code,
            on_hand=p.on_hand,
            committed=p.committed,
            reserved=p.reserved,
            unavailable=p.unavailable,
            safety_stock=p.safety_stock,
            incoming=p.incoming,
            available=p.available,
            oversold=p.oversold,
            version=v.version,
            updated_at=v.updated_at,
            cursor=encode_cursor(v.cursor_key),
        )


@strawberry.type(description="One channel rule that applied, and how many units it took")
class ChannelRuleStep:
    rule: str = strawberry.field(
        description="SAFETY_BUFFER_UNITS, SAFETY_BUFFER_PERCENT, ALLOCATION_PERCENT, ALLOCATION_CAP, "
        "DYNAMIC_BUFFER, OWN_RESERVATIONS, OUT_OF_STOCK_THRESHOLD, NOT_LAUNCHED, BACKORDER or PREORDER"
    )
    units_taken: int = strawberry.field(description="Units the rule removed (negative: BACKORDER adds units)")
    figure_after: int


@strawberry.type(description="How a channel's rules turned the pooled stock into its figure, in the contract's order")
class ChannelExplanation:
    pool: int = strawberry.field(description="Σ max(0, available - ring-fenced for other channels) at its locations")
    mine: int = strawberry.field(description="Units this channel holds in active reservations")
    base: int = strawberry.field(description="pool + mine: what the percentages and the cap apply to")
    incoming: int
    on_hand_part: int = strawberry.field(description="The figure before the backorder allowance")
    backorderable: int = strawberry.field(description="Units sellable against incoming stock")
    expected_at: datetime | None = strawberry.field(description="Earliest expected arrival, when backorderable")
    steps: list[ChannelRuleStep]
    dynamic_buffer: int = strawberry.field(default=0, description="Units the buffer that follows demand kept back")
    preorderable: int = strawberry.field(
        default=0, description="Of backorderable: units sellable as preorders before the SKU's launch"
    )

    @classmethod
    def of(cls, f: ChannelFigure) -> ChannelExplanation:
        return cls(
            pool=f.pool,
            mine=f.mine,
            base=f.base,
            incoming=f.incoming,
            on_hand_part=f.on_hand_part,
            backorderable=f.backorderable,
            expected_at=f.expected_at,
            steps=[
                ChannelRuleStep(rule=s.rule, units_taken=s.units_taken, figure_after=s.figure_after) for s in f.steps
            ],
            dynamic_buffer=f.dynamic_buffer,
            preorderable=f.preorderable,
        )


@strawberry.type(description="One SKU across the locations that count (all active ones, or a channel's)")
class Availability:
    sku_code: str
    channel_code: str | None
    available: int = strawberry.field(description="What may be sold now (never below 0)")
    oversold: int
    locations: list[StockLevel]
    version: int = strawberry.field(description="Strictly increasing per (SKU, channel)")
    explain: ChannelExplanation | None = strawberry.field(
        default=None, description="With a channel: which rule took how many units"
    )
    # B2B (issue 19)
    account_code: str | None = strawberry.field(default=None, description="The B2B account the figure is for")
    unit: str = strawberry.field(
        default="each", description="The sell unit `available` is counted in: floor(base units / its size)"
    )

    @classmethod
    def of(cls, v: AvailabilityView) -> Availability:
        figure = getattr(v, "figure", None)
        return cls(
            sku_code=v.sku_code,
            channel_code=v.channel_code,
            available=v.available,
            oversold=v.oversold,
            locations=[StockLevel.of(lv) for lv in v.locations],
            version=v.version,
            explain=ChannelExplanation.of(figure) if isinstance(figure, ChannelFigure) else None,
        )


@strawberry.type
class ReservationLine:
    sku_code: str
    location_code: str
    quantity: int = strawberry.field(description="The whole line: units held from stock + backordered")
    backordered: int = strawberry.field(
        default=0,
        description="Units promised against incoming stock under the channel's backorder limit (not held stock)",
    )
    expected_at: datetime | None = strawberry.field(
        default=None, description="The expected arrival the backordered units were promised against, when known"
    )
    preordered: int = strawberry.field(default=0, description="Of backordered: units sold as preorders before launch")

    @strawberry.field(description="Units held from stock now: quantity - backordered")
    def held(self) -> int:
        return self.quantity - self.backordered


@strawberry.type
class Reservation:
    id: strawberry.ID
    status: ReservationStatus
    expires_at: datetime
    created_at: datetime
    cart_ref: str | None
    order_ref: str | None
    channel_code: str | None
    lines: list[ReservationLine]

    @classmethod
    def of(cls, v: ReservationView) -> Reservation:
        return cls(
            id=strawberry.ID(v.id),
            status=v.status,
            expires_at=v.expires_at,
            created_at=v.created_at,
            cart_ref=v.cart_ref,
            order_ref=v.order_ref,
            channel_code=v.channel_code,
            lines=[
                ReservationLine(
                    sku_code=ln.sku_code,
                    location_code=ln.location_code,
                    quantity=ln.quantity,
                    backordered=ln.backordered,
                    expected_at=ln.expected_at,
                    preordered=ln.preordered,
                )
                for ln in v.lines
            ],
        )


@strawberry.type
class EventResult:
    index: int
    status: EventStatus
    version: int | None = strawberry.field(description="The position's version after the event")
    drift: int = strawberry.field(description="Units clipped at 0 (reported as drift)")


@strawberry.type
class UpsertSkusPayload:
    skus: list[Sku]
    user_errors: list[UserError]


@strawberry.type
class UpsertLocationsPayload:
    locations: list[Location]
    user_errors: list[UserError]


@strawberry.type
class RecordInventoryEventsPayload:
    results: list[EventResult]
    user_errors: list[UserError]


@strawberry.type(description="B2B (issue 19): what one requested line got (a partial hold may get less)")
class ReserveLineOutcome:
    index: int = strawberry.field(description="The line's position in the request")
    sku_code: str
    unit: str = strawberry.field(description="The unit the line was requested in")
    requested: int = strawberry.field(description="Base units asked for (quantity x the unit's size)")
    held: int = strawberry.field(description="Base units held from stock now")
    backordered: int = strawberry.field(description="Base units promised against incoming stock")
    unfilled: int = strawberry.field(description="Base units neither held nor backordered (partial holds only)")
    expected_at: datetime | None = strawberry.field(description="Expected arrival of the stock covering the backorder")


@strawberry.type
class ReservePayload:
    reservation: Reservation | None
    user_errors: list[UserError]
    lines: list[ReserveLineOutcome] = strawberry.field(
        default_factory=list, description="Per requested line: held now, backordered, when expected"
    )


@strawberry.type
class ReservationPayload:
    reservation: Reservation | None
    user_errors: list[UserError]
