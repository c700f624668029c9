"""Expected failures, reported to clients as `userErrors` with a stable code; nothing is changed."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    UNKNOWN_SKU = "UNKNOWN_SKU"
    UNKNOWN_LOCATION = "UNKNOWN_LOCATION"
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    INACTIVE_SKU = "INACTIVE_SKU"
    INACTIVE_LOCATION = "INACTIVE_LOCATION"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    INVALID_TTL = "INVALID_TTL"
    INVALID_INPUT = "INVALID_INPUT"
    DUPLICATE_LINE = "DUPLICATE_LINE"
    RESERVATION_NOT_FOUND = "RESERVATION_NOT_FOUND"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
    RESERVATION_NOT_ACTIVE = "RESERVATION_NOT_ACTIVE"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    EVENT_CONFLICT = "EVENT_CONFLICT"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    NOT_APPLIED = "NOT_APPLIED"
    QUANTITY_OUT_OF_RANGE = "QUANTITY_OUT_OF_RANGE"
    RATE_LIMITED = "RATE_LIMITED"
    # B2B (issue 19)
    UNKNOWN_UNIT = "UNKNOWN_UNIT"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"


@dataclass(frozen=True, slots=True)
class UserError:
    code: ErrorCode
    message: str
    field: tuple[str, ...] | None = None


class Refused(Exception):
    """Raised inside a service to roll its transaction back and report these errors instead."""

    def __init__(self, errors: list[UserError]) -> None:
        super().__init__("; ".join(f"{e.code}: {e.message}" for e in errors))
        self.errors = errors
