"""Checkout reservations: what a request may ask for, how a hold is split, and the state table."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from app.domain.errors import ErrorCode, UserError


class ReservationStatus(StrEnum):
    ACTIVE = "ACTIVE"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


def effective_status(stored: ReservationStatus, expires_at: datetime, now: datetime) -> ReservationStatus:
    """A hold past its expiry is EXPIRED at once, whether or not the sweeper has run yet."""
    if stored is ReservationStatus.ACTIVE and expires_at <= now:
        return ReservationStatus.EXPIRED
    return stored


class Action(StrEnum):
    COMMIT = "COMMIT"
    RELEASE = "RELEASE"
    EXTEND = "EXTEND"


class Outcome(StrEnum):
    APPLY = "APPLY"
    NO_OP = "NO_OP"  # idempotent repeat: answer with the reservation as it is


# The contract's transition table: (action, effective status) -> outcome or the error to report.
_TRANSITIONS: dict[tuple[Action, ReservationStatus], Outcome | ErrorCode] = {
    (Action.COMMIT, ReservationStatus.ACTIVE): Outcome.APPLY,
    (Action.COMMIT, ReservationStatus.COMMITTED): Outcome.NO_OP,
    (Action.COMMIT, ReservationStatus.RELEASED): ErrorCode.RESERVATION_NOT_ACTIVE,
    (Action.COMMIT, ReservationStatus.EXPIRED): ErrorCode.RESERVATION_EXPIRED,
    (Action.RELEASE, ReservationStatus.ACTIVE): Outcome.APPLY,
    (Action.RELEASE, ReservationStatus.COMMITTED): ErrorCode.RESERVATION_NOT_ACTIVE,
    (Action.RELEASE, ReservationStatus.RELEASED): Outcome.NO_OP,
    (Action.RELEASE, ReservationStatus.EXPIRED): Outcome.NO_OP,
    (Action.EXTEND, ReservationStatus.ACTIVE): Outcome.APPLY,
    (Action.EXTEND, ReservationStatus.COMMITTED): ErrorCode.RESERVATION_NOT_ACTIVE,
    (Action.EXTEND, ReservationStatus.RELEASED): ErrorCode.RESERVATION_NOT_ACTIVE,
    (Action.EXTEND, ReservationStatus.EXPIRED): ErrorCode.RESERVATION_EXPIRED,
}


def transition(action: Action, status: ReservationStatus) -> Outcome | ErrorCode:
    return _TRANSITIONS[(action, status)]


def repeat_commit(committed_for: str | None, order_ref: str) -> Outcome | ErrorCode:
    """Committing a COMMITTED reservation again: a retry for the same order changes nothing and answers
    as the first commit did; another order cannot take units already promised to the first."""
    return Outcome.NO_OP if committed_for == order_ref else ErrorCode.RESERVATION_NOT_ACTIVE


@dataclass(frozen=True, slots=True)
class RequestedLine:
    sku_code: str
    quantity: int
    location_code: str | None = None


def validate_lines(lines: list[RequestedLine], max_units: int) -> list[UserError]:
    """Lines a reservation may not be made of, each error naming its line."""
    errors: list[UserError] = []
    if not lines:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "a reservation needs at least one line", ("lines",)))
    seen: set[tuple[str, str | None]] = set()
    for i, line in enumerate(lines):
        where = ("lines", str(i))
        if line.quantity <= 0:
            errors.append(UserError(ErrorCode.INVALID_QUANTITY, "quantity must be > 0", (*where, "quantity")))
        key = (line.sku_code, line.location_code)
        if key in seen:
            errors.append(UserError(ErrorCode.DUPLICATE_LINE, f"{line.sku_code} appears twice; merge the lines", where))
        seen.add(key)
    total = sum(max(0, line.quantity) for line in lines)
    if total > max_units:
        errors.append(
            UserError(ErrorCode.INVALID_QUANTITY, f"a reservation may hold at most {max_units} units", ("lines",))
        )
    return errors


def validate_ttl(ttl_seconds: int | None, default: int, maximum: int) -> int | UserError:
    if ttl_seconds is None:
        return default
    if not 1 <= ttl_seconds <= maximum:
        return UserError(ErrorCode.INVALID_TTL, f"ttlSeconds must be between 1 and {maximum}", ("ttlSeconds",))
    return ttl_seconds


def key_and_cart_errors(idempotency_key: str, cart_ref: str | None) -> list[UserError]:
    """The checks reserve and routeAndReserve share: both open a reservation under a key, for a cart."""
    errors: list[UserError] = []
    if not idempotency_key.strip() or len(idempotency_key) > 200:
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "idempotencyKey must be 1-200 characters", ("idempotencyKey",))
        )
    if cart_ref is not None and len(cart_ref) > 200:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "cartRef is at most 200 characters", ("cartRef",)))
    return errors


def lines_fingerprint(lines: list[RequestedLine], channel_code: str | None, cart_ref: str | None) -> str:
    """What makes two reserve calls with one idempotency key 'the same request' (line order aside)."""
    parts = sorted(f"{ln.sku_code}\x1f{ln.location_code or ''}\x1f{ln.quantity}" for ln in lines)
    parts.append(f"channel\x1f{channel_code or ''}\x1fcart\x1f{cart_ref or ''}")
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


def plan_split(wanted: int, candidates: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Take `wanted` units from (location, available) candidates in the order given (priority order).

    Returns (location, units) pairs; their sum is less than `wanted` only when stock is short.
    """
    plan: list[tuple[int, int]] = []
    left = wanted
    for location, available in candidates:
        if left == 0:
            break
        take = min(left, available)
        if take > 0:
            plan.append((location, take))
            left -= take
    return plan
