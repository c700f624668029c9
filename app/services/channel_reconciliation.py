"""Reconciliation: compare a snapshot from the system of record with the ledger, and report the drift.

For each (SKU, location) in the snapshot, `expected` is our on-hand *as of the snapshot's time* (the
position less the on-hand effects of events that occurred after it), so a snapshot taken an hour ago
is not reported as drifting because of sales since. Drift is reported with `since` (the last count we
applied there, or the first event when there was none: the period over which the difference built
up) and the ledger rows that explain it: rows whose effect was clipped (drift), and counts or late
events that were recorded but not applied (FLAGGED, SUPERSEDED).

Applying a snapshot records each drifting row as a COUNTED event at the snapshot's time, through the
ordinary event path: the late-event rules then do the right thing with anything recorded since, and
re-importing the same snapshot is a DUPLICATE (its externalIds are derived from the snapshot).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import external_holds, inventory_events, locations, reservation_lines, reservations, skus
from app.db.tables import stock_levels as sl
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import EventStatus, EventType, InventoryEvent
from app.domain.reservations import ReservationStatus
from app.services import events
from app.services.context import Ctx

ie = inventory_events
CHUNK = 500


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    sku_code: str
    location_code: str
    on_hand: int


@dataclass(frozen=True, slots=True)
class DriftCause:
    id: int
    source: str
    external_id: str | None
    kind: str
    status: str
    occurred_at: datetime
    quantity: int
    on_hand_change: int
    drift: int


@dataclass(frozen=True, slots=True)
class Drift:
    sku_code: str
    location_code: str
    expected: int  # our on-hand as of the snapshot's time
    reported: int  # the system of record's
    since: datetime | None
    causes: tuple[DriftCause, ...]
    applied: str | None = None  # the COUNTED event's status when applied

    @property
    def difference(self) -> int:
        return self.reported - self.expected


@dataclass
class SnapshotReport:
    rows: int = 0
    matched: int = 0
    drift: list[Drift] = field(default_factory=list)
    unknown: list[UserError] = field(default_factory=list)


def _external_id(taken_at: datetime, row: SnapshotRow) -> str:
    return f"snapshot:{taken_at.astimezone(UTC).isoformat()}:{row.sku_code}:{row.location_code}"[:200]


async def compare(
    ctx: Ctx, source: str, taken_at: datetime, rows: list[SnapshotRow], apply: bool = False
) -> SnapshotReport:
    """Report the drift of these rows (one read); with `apply`, record COUNTED events for the drifting ones."""
    errors = _validate(source, taken_at, rows, ctx.clock())
    if errors:
        raise Refused(errors)
    async with ctx.db.read() as conn:
        report = await _compare(conn, taken_at, rows)
    if apply and report.drift:
        counted = [
            InventoryEvent(
                source=source,
                external_id=_external_id(taken_at, SnapshotRow(d.sku_code, d.location_code, d.reported)),
                type=EventType.COUNTED,
                sku_code=d.sku_code,
                location_code=d.location_code,
                quantity=d.reported,
                occurred_at=taken_at,
                reason="reconciliation snapshot",
            )
            for d in report.drift
        ]
        results, _ = await events.record_events(ctx, counted, atomic=True)
        report.drift = [
            Drift(d.sku_code, d.location_code, d.expected, d.reported, d.since, d.causes, r.status.value)
            for d, r in zip(report.drift, results, strict=True)
        ]
    return report


def _validate(source: str, taken_at: datetime, rows: list[SnapshotRow], now: datetime) -> list[UserError]:
    errors: list[UserError] = []
    if not source.strip() or len(source) > 100:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "source must be 1-100 characters", ("source",)))
    if taken_at.tzinfo is None or taken_at > now + timedelta(minutes=10):
        errors.append(UserError(ErrorCode.INVALID_INPUT, "takenAt must be a timezone-aware past time", ("takenAt",)))
    seen: set[tuple[str, str]] = set()
    for i, r in enumerate(rows):
        if r.on_hand < 0:
            errors.append(
                UserError(ErrorCode.INVALID_QUANTITY, "onHand must be 0 or more", ("input", str(i), "onHand"))
            )
        if (r.sku_code, r.location_code) in seen:
            errors.append(
                UserError(ErrorCode.DUPLICATE_LINE, f"{r.sku_code} at {r.location_code} twice", ("input", str(i)))
            )
        seen.add((r.sku_code, r.location_code))
    return errors


async def _compare(conn: AsyncConnection, taken_at: datetime, rows: list[SnapshotRow]) -> SnapshotReport:
    report = SnapshotReport(rows=len(rows))
    sku_ids = {
        r.code: r.id
        for r in await conn.execute(select(skus.c.code, skus.c.id).where(skus.c.code.in_({r.sku_code for r in rows})))
    }
    loc_ids = {
        r.code: r.id
        for r in await conn.execute(
            select(locations.c.code, locations.c.id).where(locations.c.code.in_({r.location_code for r in rows}))
        )
    }
    known: list[tuple[int, SnapshotRow]] = []
    for i, r in enumerate(rows):
        if r.sku_code not in sku_ids:
            report.unknown.append(
                UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {r.sku_code!r}", ("input", str(i), "skuCode"))
            )
        elif r.location_code not in loc_ids:
            report.unknown.append(
                UserError(
                    ErrorCode.UNKNOWN_LOCATION, f"no location {r.location_code!r}", ("input", str(i), "locationCode")
                )
            )
        else:
            known.append((i, r))
    pairs = [(sku_ids[r.sku_code], loc_ids[r.location_code]) for _, r in known]
    positions: dict[stock.Pair, Any] = {}
    if pairs:
        clause = tuple_(sl.c.sku_id, sl.c.location_id).in_(sorted(set(pairs)))
        positions = {(p.sku_id, p.location_id): p for p in await conn.execute(select(sl).where(clause))}
    for (_, r), pair in zip(known, pairs, strict=True):
        position = positions.get(pair)
        now_on_hand = int(position.on_hand) if position is not None else 0
        expected = now_on_hand - await stock.on_hand_after(conn, pair, taken_at)
        if expected == r.on_hand:
            report.matched += 1
            continue
        since = position.counted_at if position is not None else None
        if since is None:
            since = await conn.scalar(
                select(func.min(ie.c.occurred_at)).where(ie.c.sku_id == pair[0], ie.c.location_id == pair[1])
            )
        causes = await conn.execute(
            select(ie)
            .where(
                ie.c.sku_id == pair[0],
                ie.c.location_id == pair[1],
                ie.c.occurred_at <= taken_at,
                ie.c.occurred_at >= since if since is not None else ie.c.id.is_not(None),
                or_(ie.c.drift != 0, ie.c.status.in_([EventStatus.FLAGGED.value, EventStatus.SUPERSEDED.value])),
            )
            .order_by(ie.c.occurred_at, ie.c.id)
        )
        report.drift.append(
            Drift(
                sku_code=r.sku_code,
                location_code=r.location_code,
                expected=expected,
                reported=r.on_hand,
                since=since,
                causes=tuple(
                    DriftCause(
                        id=int(c.id),
                        source=c.source,
                        external_id=c.external_id,
                        kind=c.kind,
                        status=c.status,
                        occurred_at=c.occurred_at,
                        quantity=int(c.quantity),
                        on_hand_change=int(c.d_on_hand),
                        drift=int(c.drift),
                    )
                    for c in causes
                ),
            )
        )
    return report


def read_csv(path: Path) -> Iterator[SnapshotRow]:
    """Rows of a CSV with a header naming `sku`, `location` and `on_hand` (extra columns ignored)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"sku", "location", "on_hand"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the header needs the columns {', '.join(sorted(missing))}")
        for n, rec in enumerate(reader, start=2):
            try:
                yield SnapshotRow(rec["sku"].strip(), rec["location"].strip(), int(rec["on_hand"]))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{n}: on_hand must be a whole number") from exc


async def import_csv(
    ctx: Ctx,
    path: Path,
    source: str,
    taken_at: datetime,
    apply: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SnapshotReport:
    """The CLI's import: the file in chunks (each compared, and applied when asked), one report."""
    total = SnapshotReport()
    chunk: list[SnapshotRow] = []

    async def flush() -> None:
        part = await compare(ctx, source, taken_at, chunk, apply)
        total.rows += part.rows
        total.matched += part.matched
        total.drift += part.drift
        total.unknown += part.unknown
        if progress is not None:
            progress(len(chunk))
        chunk.clear()

    for row in read_csv(path):
        chunk.append(row)
        if len(chunk) >= CHUNK:
            await flush()
    if chunk:
        await flush()
    return total


# --- orphaned holds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrphanedHold:
    kind: str  # RESERVATION_PAST_EXPIRY, EXTERNAL_HOLD_PAST_EXPIRY or COMMITTED_NOT_SHIPPED
    id: str
    sku_code: str
    location_code: str
    quantity: int
    since: datetime


async def orphaned_holds(ctx: Ctx, committed_days: int = 7) -> list[OrphanedHold]:
    """Holds that should be gone: ACTIVE past expiry (the sweeper is behind or down), and reservations
    committed more than `committed_days` ago at a location that still shows committed units."""
    now = ctx.clock()
    r_, rl, eh = reservations, reservation_lines, external_holds
    out: list[OrphanedHold] = []
    async with ctx.db.read() as conn:
        base = (
            select(r_.c.id, r_.c.status, r_.c.expires_at, r_.c.updated_at, rl.c.quantity, rl.c.backordered)
            .add_columns(skus.c.code.label("sku_code"), locations.c.code.label("location_code"))
            .join(rl, rl.c.reservation_id == r_.c.id)
            .join(skus, skus.c.id == rl.c.sku_id)
            .join(locations, locations.c.id == rl.c.location_id)
        )
        for r in await conn.execute(
            base.where(r_.c.status == ReservationStatus.ACTIVE.value, r_.c.expires_at <= now).order_by(r_.c.expires_at)
        ):
            out.append(
                OrphanedHold(
                    "RESERVATION_PAST_EXPIRY",
                    r.id,
                    r.sku_code,
                    r.location_code,
                    int(r.quantity + r.backordered),
                    r.expires_at,
                )
            )
        for r in await conn.execute(
            select(eh, skus.c.code.label("sku_code"), locations.c.code.label("location_code"))
            .join(skus, skus.c.id == eh.c.sku_id)
            .join(locations, locations.c.id == eh.c.location_id)
            .where(eh.c.status == "ACTIVE", eh.c.expires_at <= now)
            .order_by(eh.c.expires_at)
        ):
            out.append(
                OrphanedHold(
                    "EXTERNAL_HOLD_PAST_EXPIRY",
                    f"{r.source}/{r.external_id}",
                    r.sku_code,
                    r.location_code,
                    int(r.quantity),
                    r.expires_at,
                )
            )
        stale = now - timedelta(days=committed_days)
        for r in await conn.execute(
            base.join(sl, and_(sl.c.sku_id == rl.c.sku_id, sl.c.location_id == rl.c.location_id))
            .where(r_.c.status == ReservationStatus.COMMITTED.value, r_.c.updated_at <= stale, sl.c.committed > 0)
            .order_by(r_.c.updated_at)
        ):
            out.append(
                OrphanedHold(
                    "COMMITTED_NOT_SHIPPED",
                    r.id,
                    r.sku_code,
                    r.location_code,
                    int(r.quantity + r.backordered),
                    r.updated_at,
                )
            )
    return out
