"""The rows a hold writes, shared by reserve and routeAndReserve: the reservation row under its
idempotency key, its lines, their ledger and outbox rows."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import inventory_events, reservation_lines, reservations
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import EventStatus, LedgerKind
from app.domain.quantities import Delta
from app.domain.reservations import ReservationStatus
from app.services import demand
from app.services.reservations.reads import load_views
from app.services.views import ReservationView

r_ = reservations
rl = reservation_lines
INSERT_LINE = insert(rl)


def by_sku(*per_pair: dict[stock.Pair, int]) -> dict[int, int]:
    units: dict[int, int] = defaultdict(int)
    for part in per_pair:
        for pair, q in part.items():
            units[pair[0]] += q
    return units


def reserved_row(
    pair: stock.Pair, quantity: int, version: int, now: datetime, reservation_id: str, reference: str | None
) -> dict[str, Any]:
    """The ledger row of units held for a reservation (the fold of the ledger must equal the position)."""
    return stock.ledger_row(
        kind=LedgerKind.RESERVED.value,
        status=EventStatus.APPLIED.value,
        pair=pair,
        quantity=quantity,
        delta=Delta(reserved=quantity),
        version=version,
        now=now,
        reservation_id=reservation_id,
        reference=reference,
    )


async def by_idempotency_key(conn: AsyncConnection, scope: str, key: str) -> Any:
    """The reservation row made with this key in this scope, or None."""
    result = await conn.execute(select(r_).where(r_.c.idempotency_scope == scope, r_.c.idempotency_key == key))
    return result.first()


async def repeat(
    conn: AsyncConnection,
    now: datetime,
    row: Any,
    fingerprint: str,
    *,
    same_operation: bool = True,
    used_for: str = "reservation",
) -> ReservationView:
    """A retry with a key that already made reservation `row`: that reservation again, or
    IDEMPOTENCY_CONFLICT when the key was used for a different request (or, `same_operation` False,
    by another operation: reserve and routeAndReserve share the keys)."""
    if row.fingerprint != fingerprint or not same_operation:
        message = f"this idempotencyKey was used for a different {used_for}"
        raise Refused([UserError(ErrorCode.IDEMPOTENCY_CONFLICT, message, ("idempotencyKey",))])
    return (await load_views(conn, now, [row.id]))[0]


async def open_reservation(
    conn: AsyncConnection,
    now: datetime,
    *,
    idempotency_scope: str,
    idempotency_key: str,
    fingerprint: str,
    ttl_seconds: int,
    channel_code: str | None = None,
    cart_ref: str | None = None,
    order_ref: str | None = None,
    owner_key_id: str | None = None,
) -> str:
    """Insert an ACTIVE reservation row with no lines yet; returns its id. Insert it before holding:
    a concurrent call with the same key then fails on the unique key, before it holds anything."""
    row = active_row(now, ttl_seconds, idempotency_scope, idempotency_key, fingerprint, channel_code, cart_ref)
    await conn.execute(insert(r_), {**row, "order_ref": order_ref, "owner_key_id": owner_key_id})
    return str(row["id"])


def active_row(
    now: datetime,
    ttl_seconds: int,
    idempotency_scope: str,
    idempotency_key: str,
    fingerprint: str,
    channel_code: str | None,
    cart_ref: str | None,
    *,
    make_id: bool = True,
) -> dict[str, Any]:
    """A new ACTIVE reservation row (reserve and routeAndReserve both open one before holding);
    `make_id` False: no id yet (id None: the insert makes one)."""
    return {
        "id": str(uuid.uuid4()) if make_id else None,
        "status": ReservationStatus.ACTIVE.value,
        "idempotency_scope": idempotency_scope,
        "idempotency_key": idempotency_key,
        "fingerprint": fingerprint,
        "channel_code": channel_code,
        "cart_ref": cart_ref,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "owner_key_id": None,
    }


async def record_holds(
    conn: AsyncConnection,
    now: datetime,
    reservation_id: str,
    held: dict[stock.Pair, int],
    holds: list[stock.Hold],
    reference: str | None = None,
    backordered: dict[stock.Pair, int] | None = None,
    preordered: dict[stock.Pair, int] | None = None,
) -> dict[stock.Pair, datetime]:
    """The lines, ledger rows and outbox rows for units already taken with `stock.hold` (and, under a
    channel's backorder allowance, units `backordered` against incoming stock: a line, no ledger row).

    `held` is the units per position (one line each); `holds` every hold that took them, one ledger
    row each, so each version a hold made has its row. Returns the expected arrival each backorder was
    promised against, where one is known."""
    backordered = {p: q for p, q in (backordered or {}).items() if q}
    expected = await _expected_arrivals(conn, list(backordered), now)
    pairs = sorted((p, q) for p, q in held.items() if q)
    await stock.insert_rows(
        conn,
        INSERT_LINE,
        [
            {
                "reservation_id": reservation_id,
                "sku_id": p[0],
                "location_id": p[1],
                "quantity": held.get(p, 0),
                "backordered": backordered.get(p, 0),
                "backorder_open": backordered.get(p, 0),
                "expected_at": expected.get(p),
                "preordered": (preordered or {}).get(p, 0),
            }
            for p in sorted({p for p, _ in pairs} | set(backordered))
        ],
    )
    await stock.write_ledger(
        conn,
        [reserved_row(p, q, version, now, reservation_id, reference) for p, q, version in holds if q],
    )
    await stock.enqueue_changes(conn, {p for p, _ in pairs} | set(backordered), now)
    # issue 18: the reservation's units are demand under its channel (last: after its stock rows)
    await demand.note_reserved(conn, now, reservation_id, by_sku({**held}, backordered))
    return expected


async def _expected_arrivals(
    conn: AsyncConnection, pairs: list[stock.Pair], now: datetime
) -> dict[stock.Pair, datetime]:
    """The earliest expected arrival still ahead at each position (what the channel figure shows)."""
    if not pairs:
        return {}
    ie = inventory_events
    rows = await conn.execute(
        select(ie.c.sku_id, ie.c.location_id, func.min(ie.c.expected_at).label("at"))
        .where(
            tuple_(ie.c.sku_id, ie.c.location_id).in_(pairs),
            ie.c.expected_at.is_not(None),
            ie.c.expected_at >= now,
        )
        .group_by(ie.c.sku_id, ie.c.location_id)
    )
    return {(r.sku_id, r.location_id): r.at for r in rows}
