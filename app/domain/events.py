"""Inventory events: what each type does to a position, and how late or foreign counts are treated.

Every rule here is the contract's event table. The service layer reads the position, asks this
module for the effect, and writes the effect and the position in one transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from app.domain.errors import ErrorCode, UserError
from app.domain.quantities import Delta, Position

MAX_QUANTITY = 1_000_000_000
# Clocks at sources drift; an event stamped further ahead than this is refused, because a count
# "from the future" would silently supersede every real event until that time.
MAX_CLOCK_SKEW = timedelta(minutes=10)


class EventType(StrEnum):
    RECEIVED = "RECEIVED"
    INCOMING = "INCOMING"
    ADJUSTED = "ADJUSTED"
    COUNTED = "COUNTED"
    SOLD = "SOLD"
    ORDER_PLACED = "ORDER_PLACED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    SHIPPED = "SHIPPED"
    RETURNED = "RETURNED"
    DAMAGED = "DAMAGED"
    REPAIRED = "REPAIRED"
    WRITTEN_OFF = "WRITTEN_OFF"
    TRANSFER_OUT = "TRANSFER_OUT"
    TRANSFER_IN = "TRANSFER_IN"
    SAFETY_STOCK_SET = "SAFETY_STOCK_SET"


class LedgerKind(StrEnum):
    """Every kind of ledger row: the reported events plus the movements Stockwire makes itself."""

    RECEIVED = "RECEIVED"
    INCOMING = "INCOMING"
    ADJUSTED = "ADJUSTED"
    COUNTED = "COUNTED"
    SOLD = "SOLD"
    ORDER_PLACED = "ORDER_PLACED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    SHIPPED = "SHIPPED"
    RETURNED = "RETURNED"
    DAMAGED = "DAMAGED"
    REPAIRED = "REPAIRED"
    WRITTEN_OFF = "WRITTEN_OFF"
    TRANSFER_OUT = "TRANSFER_OUT"
    TRANSFER_IN = "TRANSFER_IN"
    SAFETY_STOCK_SET = "SAFETY_STOCK_SET"
    # the destination side of a TRANSFER_OUT with toLocationCode: incoming += q there
    TRANSFER_EXPECTED = "TRANSFER_EXPECTED"
    RESERVED = "RESERVED"
    RESERVATION_RELEASED = "RESERVATION_RELEASED"
    RESERVATION_COMMITTED = "RESERVATION_COMMITTED"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
    # holds placed by checkouts on other platforms (the channels issue), counted in `reserved`
    EXTERNAL_HOLD_PLACED = "EXTERNAL_HOLD_PLACED"
    EXTERNAL_HOLD_CONVERTED = "EXTERNAL_HOLD_CONVERTED"
    EXTERNAL_HOLD_RELEASED = "EXTERNAL_HOLD_RELEASED"
    EXTERNAL_HOLD_EXPIRED = "EXTERNAL_HOLD_EXPIRED"


class EventStatus(StrEnum):
    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    SUPERSEDED = "SUPERSEDED"  # recorded; effects applied except on-hand (an equal or later count rules)
    FLAGGED = "FLAGGED"  # recorded, not applied: a count from a source that is not the authority


@dataclass(frozen=True, slots=True)
class InventoryEvent:
    source: str
    external_id: str
    type: EventType
    sku_code: str
    location_code: str
    quantity: int
    occurred_at: datetime
    reason: str | None = None
    reference: str | None = None
    to_location_code: str | None = None
    expected_at: datetime | None = None
    unit: str | None = None  # the sell unit `quantity` is in (issue 19); base units once recorded

    def fingerprint(self) -> str:
        """Same pair, same fingerprint: a DUPLICATE; same pair, other fingerprint: an EVENT_CONFLICT."""
        parts = [
            self.type.value,
            self.sku_code,
            self.location_code,
            str(self.quantity),
            _instant(self.occurred_at),
            self.reason or "",
            self.reference or "",
            self.to_location_code or "",
            _instant(self.expected_at) if self.expected_at else "",
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _instant(at: datetime) -> str:
    """The same instant spelt with another UTC offset is the same content (times are stored as UTC)."""
    return (at.astimezone(UTC) if at.tzinfo is not None else at).isoformat()


def validate(event: InventoryEvent, now: datetime) -> list[UserError]:
    """Everything that can be said about one event without the database."""
    errors: list[UserError] = []
    q = event.quantity
    if not event.source.strip() or len(event.source) > 100:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "source must be 1-100 characters", ("source",)))
    if not event.external_id.strip() or len(event.external_id) > 200:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "externalId must be 1-200 characters", ("externalId",)))
    if abs(q) > MAX_QUANTITY:
        errors.append(UserError(ErrorCode.INVALID_QUANTITY, f"|quantity| must be ≤ {MAX_QUANTITY}", ("quantity",)))
    elif event.type is EventType.ADJUSTED and q == 0:
        errors.append(UserError(ErrorCode.INVALID_QUANTITY, "ADJUSTED needs a quantity other than 0", ("quantity",)))
    elif event.type in (EventType.COUNTED, EventType.SAFETY_STOCK_SET) and q < 0:
        errors.append(UserError(ErrorCode.INVALID_QUANTITY, f"{event.type} needs quantity ≥ 0", ("quantity",)))
    elif event.type not in (EventType.ADJUSTED, EventType.COUNTED, EventType.SAFETY_STOCK_SET) and q <= 0:
        errors.append(UserError(ErrorCode.INVALID_QUANTITY, f"{event.type} needs quantity > 0", ("quantity",)))
    if event.to_location_code is not None:
        if event.type is not EventType.TRANSFER_OUT:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "toLocationCode is for TRANSFER_OUT only", ("toLocationCode",))
            )
        elif event.to_location_code == event.location_code:
            errors.append(UserError(ErrorCode.INVALID_INPUT, "a transfer needs two locations", ("toLocationCode",)))
    if event.expected_at is not None and event.type is not EventType.INCOMING:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "expectedAt is for INCOMING only", ("expectedAt",)))
    naive = [
        name for name, t in (("occurredAt", event.occurred_at), ("expectedAt", event.expected_at)) if t and not t.tzinfo
    ]
    if naive:
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "times need a UTC offset (e.g. 2026-01-01T09:00:00Z)", (naive[0],))
        )
    elif event.occurred_at > now + MAX_CLOCK_SKEW:
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "occurredAt is in the future (beyond clock skew)", ("occurredAt",))
        )
    for name, text in (("reason", event.reason), ("reference", event.reference)):
        if text is not None and len(text) > 2000:
            errors.append(UserError(ErrorCode.INVALID_INPUT, f"{name} is longer than 2000 characters", (name,)))
    return errors


def _take(wanted: int, there: int) -> int:
    """How much of `wanted` can come off a field that never goes below 0."""
    return min(wanted, max(0, there))


class Effect(NamedTuple):  # a NamedTuple for speed, as domain.quantities' values
    delta: Delta
    # units the event asked to remove from committed/unavailable/incoming that were not there:
    # recorded on the ledger row and reported as drift, never silently lost
    drift: int = 0


def effect(event_type: EventType, q: int, at: Position) -> Effect:
    """The change `event_type` with quantity `q` makes to the position `at` (the contract's table)."""
    match event_type:
        case EventType.RECEIVED | EventType.TRANSFER_IN:
            taken = _take(q, at.incoming)
            return Effect(Delta(on_hand=q, incoming=-taken))
        case EventType.INCOMING:
            return Effect(Delta(incoming=q))
        case EventType.ADJUSTED | EventType.RETURNED:
            return Effect(Delta(on_hand=q))
        case EventType.COUNTED:
            return Effect(Delta(on_hand=q - at.on_hand))
        case EventType.SOLD | EventType.TRANSFER_OUT:
            return Effect(Delta(on_hand=-q))
        case EventType.ORDER_PLACED:
            return Effect(Delta(committed=q))
        case EventType.ORDER_CANCELLED:
            taken = _take(q, at.committed)
            return Effect(Delta(committed=-taken), drift=q - taken)
        case EventType.SHIPPED:
            taken = _take(q, at.committed)
            return Effect(Delta(on_hand=-q, committed=-taken), drift=q - taken)
        case EventType.DAMAGED:
            return Effect(Delta(unavailable=q))
        case EventType.REPAIRED:
            taken = _take(q, at.unavailable)
            return Effect(Delta(unavailable=-taken), drift=q - taken)
        case EventType.WRITTEN_OFF:
            taken = _take(q, at.unavailable)
            return Effect(Delta(on_hand=-q, unavailable=-taken), drift=q - taken)
        case EventType.SAFETY_STOCK_SET:
            return Effect(Delta(safety_stock=q - at.safety_stock))
    raise AssertionError(f"unhandled event type {event_type}")  # pragma: no cover


def on_hand_since(applied: Iterable[tuple[datetime, int]], at: datetime) -> int:
    """Sum of the on-hand effects among `applied` (occurredAt, effect) that occurred strictly after `at`:
    what a count at `at` keeps on top of its figure (events at exactly `at` are ordered by arrival)."""
    return sum(units for occurred_at, units in applied if occurred_at > at)


class Decision(NamedTuple):  # a NamedTuple for speed, as domain.quantities' values
    status: EventStatus
    effect: Effect
    # set when a count is applied: later counts and late deltas are judged against it
    counted_at: datetime | None = None


def decide(
    event: InventoryEvent,
    at: Position,
    counted_at: datetime | None,
    count_authority: str | None,
    on_hand_since: int,
) -> Decision:
    """Apply the late-event rules (contract, "Late events") to one event.

    `counted_at` is when the last applied count at this position occurred; `count_authority` the
    source whose counts this location trusts (None: every source); `on_hand_since` the sum of the
    on-hand effects already applied here by events that occurred strictly after this event (only
    needed for a count: it replaces everything before its time and keeps everything after).
    """
    if event.type is EventType.COUNTED:
        if count_authority is not None and event.source != count_authority:
            return Decision(EventStatus.FLAGGED, Effect(Delta()))
        if counted_at is not None and event.occurred_at < counted_at:
            # an older count than one already applied: recorded, changes nothing
            return Decision(EventStatus.SUPERSEDED, Effect(Delta()))
        target = event.quantity + on_hand_since
        return Decision(EventStatus.APPLIED, Effect(Delta(on_hand=target - at.on_hand)), event.occurred_at)
    full = effect(event.type, event.quantity, at)
    if counted_at is not None and event.occurred_at < counted_at and full.delta.on_hand != 0:
        # the count already includes this event's effect on on-hand; its other effects still apply
        d = full.delta
        kept = Delta(0, d.committed, d.reserved, d.unavailable, d.safety_stock, d.incoming)
        return Decision(EventStatus.SUPERSEDED, Effect(kept, full.drift))
    return Decision(EventStatus.APPLIED, full)
