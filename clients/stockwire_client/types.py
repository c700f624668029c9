"""What the client returns: frozen dataclasses read from the operations in clients/operations/*.graphql."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

ReservationStatus = Literal["ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"]
RoutingOutcome = Literal["DRY_RUN", "RESERVED", "REFUSED"]
# the contract's codes (README, Errors); a newer server may send others, kept as plain strings
KNOWN_CODES = frozenset(
    {
        "INSUFFICIENT_STOCK", "UNKNOWN_SKU", "UNKNOWN_LOCATION", "UNKNOWN_CHANNEL", "INACTIVE_SKU",
        "INACTIVE_LOCATION", "INVALID_QUANTITY", "INVALID_TTL", "INVALID_INPUT", "DUPLICATE_LINE",
        "RESERVATION_NOT_FOUND", "RESERVATION_EXPIRED", "RESERVATION_NOT_ACTIVE", "IDEMPOTENCY_CONFLICT",
        "EVENT_CONFLICT", "BATCH_TOO_LARGE", "RATE_LIMITED",
    }
)  # fmt: skip


@dataclass(frozen=True)
class UserError:
    """An expected refusal: nothing changed. `code` is stable (INSUFFICIENT_STOCK, RESERVATION_EXPIRED, ...)."""

    code: str
    message: str
    field: tuple[str, ...] | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> UserError:
        field = data.get("field")
        return cls(str(data["code"]), str(data["message"]), tuple(field) if field is not None else None)


def user_errors(data: dict[str, Any]) -> tuple[UserError, ...]:
    return tuple(UserError.of(e) for e in data.get("userErrors") or ())


@dataclass(frozen=True)
class ReserveLine:
    sku_code: str
    quantity: int
    location_code: str | None = None

    def as_input(self) -> dict[str, Any]:
        return {"skuCode": self.sku_code, "quantity": self.quantity, "locationCode": self.location_code}


@dataclass(frozen=True)
class ReservationLine:
    sku_code: str
    location_code: str
    quantity: int


@dataclass(frozen=True)
class Reservation:
    id: str
    status: ReservationStatus
    expires_at: datetime
    cart_ref: str | None
    order_ref: str | None
    channel_code: str | None
    lines: tuple[ReservationLine, ...]

    @classmethod
    def of(cls, data: dict[str, Any]) -> Reservation:
        return cls(
            id=str(data["id"]),
            status=cast(ReservationStatus, data["status"]),
            expires_at=datetime.fromisoformat(str(data["expiresAt"])),
            cart_ref=data.get("cartRef"),
            order_ref=data.get("orderRef"),
            channel_code=data.get("channelCode"),
            lines=tuple(
                ReservationLine(ln["skuCode"], ln["locationCode"], int(ln["quantity"])) for ln in data["lines"]
            ),
        )


@dataclass(frozen=True)
class ReservationResult:
    """A checkout call's answer: the reservation, or why nothing changed (`user_errors`)."""

    reservation: Reservation | None
    user_errors: tuple[UserError, ...]

    @property
    def ok(self) -> bool:
        return self.reservation is not None and not self.user_errors

    @classmethod
    def of(cls, payload: dict[str, Any]) -> ReservationResult:
        found = payload.get("reservation")
        return cls(Reservation.of(found) if found else None, user_errors(payload))


@dataclass(frozen=True)
class LocationAvailability:
    location_code: str
    available: int
    version: int


@dataclass(frozen=True)
class Availability:
    """What may be sold of one SKU now (as a channel sees it, when one was named)."""

    sku_code: str
    channel_code: str | None
    available: int
    version: int
    locations: tuple[LocationAvailability, ...]

    @classmethod
    def of(cls, data: dict[str, Any]) -> Availability:
        return cls(
            sku_code=str(data["skuCode"]),
            channel_code=data.get("channelCode"),
            available=int(data["available"]),
            version=int(data["version"]),
            locations=tuple(
                LocationAvailability(lv["locationCode"], int(lv["available"]), int(lv["version"]))
                for lv in data.get("locations") or ()
            ),
        )


@dataclass(frozen=True)
class StockLevel:
    sku_code: str
    location_code: str
    on_hand: int
    committed: int
    reserved: int
    available: int
    incoming: int
    version: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> StockLevel:
        return cls(
            str(data["skuCode"]), str(data["locationCode"]), int(data["onHand"]), int(data["committed"]),
            int(data["reserved"]), int(data["available"]), int(data["incoming"]), int(data["version"]),
        )  # fmt: skip


@dataclass(frozen=True)
class SnapshotComplete:
    """Every SKU watched is at least as new as the server's state when this (re)connection began."""

    resync: bool  # False the first time; True after a reconnect


@dataclass(frozen=True)
class Shipment:
    location_code: str
    lines: tuple[ReservationLine, ...]

    @classmethod
    def of(cls, data: dict[str, Any]) -> Shipment:
        lines = tuple(ReservationLine(ln["skuCode"], ln["locationCode"], int(ln["quantity"])) for ln in data["lines"])
        return cls(str(data["locationCode"]), lines)


@dataclass(frozen=True)
class RoutedLine:
    sku_code: str
    quantity: int
    unserved_quantity: int
    allocations: tuple[tuple[str, int], ...]  # (location, units)


@dataclass(frozen=True)
class RoutingDecision:
    """Which locations ship an order, and why (`reason`, one sentence)."""

    id: str | None  # the stored decision; None for a dry run
    outcome: RoutingOutcome
    reason: str
    ranking: tuple[str, ...]
    shipments: tuple[Shipment, ...]
    backorders: tuple[Shipment, ...]
    lines: tuple[RoutedLine, ...]
    user_errors: tuple[UserError, ...]

    @classmethod
    def of(cls, data: dict[str, Any], errors: tuple[UserError, ...] | None = None) -> RoutingDecision:
        return cls(
            id=data.get("id"),
            outcome=cast(RoutingOutcome, data["outcome"]),
            reason=str(data["reason"]),
            ranking=tuple(data["ranking"]),
            shipments=tuple(Shipment.of(s) for s in data["shipments"]),
            backorders=tuple(Shipment.of(s) for s in data["backorders"]),
            lines=tuple(
                RoutedLine(
                    ln["skuCode"],
                    int(ln["quantity"]),
                    int(ln["unservedQuantity"]),
                    tuple((a["locationCode"], int(a["quantity"])) for a in ln["allocations"]),
                )
                for ln in data["lines"]
            ),
            user_errors=errors if errors is not None else user_errors(data),
        )


@dataclass(frozen=True)
class RouteAndReserveResult:
    decision: RoutingDecision | None
    reservation: Reservation | None
    user_errors: tuple[UserError, ...]

    @property
    def ok(self) -> bool:
        return self.reservation is not None and not self.user_errors

    @classmethod
    def of(cls, payload: dict[str, Any]) -> RouteAndReserveResult:
        errors = user_errors(payload)
        decision = payload.get("decision")
        reservation = payload.get("reservation")
        return cls(
            RoutingDecision.of(decision, errors) if decision else None,
            Reservation.of(reservation) if reservation else None,
            errors,
        )


@dataclass(frozen=True)
class Order:
    """An order to route: its lines carry no location (routing chooses)."""

    order_ref: str
    lines: tuple[ReserveLine, ...]
    channel_code: str | None = None
    destination: tuple[float, float] | None = None  # (latitude, longitude)
    cart_ref: str | None = None
    ttl_seconds: int | None = None
    allow_split: bool = True
    idempotency_key: str | None = None  # default: order_ref

    def as_input(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "orderRef": self.order_ref,
            "lines": [line.as_input() for line in self.lines],
            "channelCode": self.channel_code,
            "cartRef": self.cart_ref,
            "ttlSeconds": self.ttl_seconds,
            "allowSplit": self.allow_split,
            "idempotencyKey": self.idempotency_key,
        }
        if self.destination is not None:
            data["destination"] = {"latitude": self.destination[0], "longitude": self.destination[1]}
        return data
