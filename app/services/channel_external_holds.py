"""Holds from other platforms: a checkout elsewhere keeps units here until released, converted or expired.

An integration reports PLACE, CONVERT and RELEASE by (source, externalId); repeating a report is
harmless (DUPLICATE). While ACTIVE a hold counts in `reserved` at its location, through ledger rows like
every other change, so `stockwire check` still folds positions from the ledger. A placed hold is a fact
on the other platform, so it is recorded even when it oversells here (that shows as `oversold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import external_holds, locations, skus
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import MAX_QUANTITY, EventStatus, LedgerKind
from app.domain.quantities import Delta
from app.services.context import Ctx

eh = external_holds


class HoldAction(StrEnum):
    PLACE = "PLACE"
    CONVERT = "CONVERT"
    RELEASE = "RELEASE"


class HoldStatus(StrEnum):
    ACTIVE = "ACTIVE"
    CONVERTED = "CONVERTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class HoldCommand:
    source: str
    external_id: str
    action: HoldAction
    sku_code: str | None = None
    location_code: str | None = None
    quantity: int | None = None
    expires_at: datetime | None = None
    channel_code: str | None = None


@dataclass(frozen=True, slots=True)
class HoldResult:
    index: int
    status: EventStatus  # APPLIED, or DUPLICATE when the hold was already in that state
    hold_status: HoldStatus


# (ledger kind, reserved change per unit, committed change per unit, the status it leads to)
_MOVES: dict[HoldAction, tuple[LedgerKind, int, int, HoldStatus]] = {
    HoldAction.PLACE: (LedgerKind.EXTERNAL_HOLD_PLACED, 1, 0, HoldStatus.ACTIVE),
    HoldAction.CONVERT: (LedgerKind.EXTERNAL_HOLD_CONVERTED, -1, 1, HoldStatus.CONVERTED),
    HoldAction.RELEASE: (LedgerKind.EXTERNAL_HOLD_RELEASED, -1, 0, HoldStatus.RELEASED),
}


def _validate(i: int, c: HoldCommand) -> list[UserError]:
    where = ("input", str(i))
    errors: list[UserError] = []
    if not c.source.strip() or len(c.source) > 100:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "source must be 1-100 characters", (*where, "source")))
    if not c.external_id.strip() or len(c.external_id) > 200:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "externalId must be 1-200 characters", (*where, "externalId")))
    if c.action is HoldAction.PLACE:
        if c.sku_code is None or c.location_code is None:
            errors.append(UserError(ErrorCode.INVALID_INPUT, "PLACE needs skuCode and locationCode", where))
        if c.quantity is None or not 0 < c.quantity <= MAX_QUANTITY:
            errors.append(UserError(ErrorCode.INVALID_QUANTITY, "PLACE needs a quantity above 0", (*where, "quantity")))
    return errors


async def record_holds(ctx: Ctx, commands: list[HoldCommand]) -> list[HoldResult]:
    """Apply every command or none (Refused with every problem found)."""
    if len(commands) > ctx.settings.max_batch_size:
        raise Refused(
            [UserError(ErrorCode.BATCH_TOO_LARGE, f"at most {ctx.settings.max_batch_size} per call", ("input",))]
        )
    errors = [e for i, c in enumerate(commands) for e in _validate(i, c)]
    if errors:
        raise Refused(errors)

    async def work(conn: AsyncConnection) -> list[HoldResult]:
        return await _apply(conn, ctx, commands)

    return await ctx.db.write(work)


async def _apply(conn: AsyncConnection, ctx: Ctx, commands: list[HoldCommand]) -> list[HoldResult]:
    now = ctx.clock()
    sku_ids = {
        r.code: r.id
        for r in await conn.execute(
            select(skus.c.code, skus.c.id).where(skus.c.code.in_({c.sku_code for c in commands if c.sku_code}))
        )
    }
    loc_ids = {
        r.code: r.id
        for r in await conn.execute(
            select(locations.c.code, locations.c.id).where(
                locations.c.code.in_({c.location_code for c in commands if c.location_code})
            )
        )
    }
    keys = list({(c.source, c.external_id) for c in commands})
    # locked: a concurrent CONVERT and RELEASE of one hold queue here, and exactly one wins
    q = select(eh).where(tuple_(eh.c.source, eh.c.external_id).in_(keys)).with_for_update()
    rows: dict[tuple[str, str], Any] = {(r.source, r.external_id): r for r in await conn.execute(q)}
    errors: list[UserError] = []
    results: list[HoldResult] = []
    ledger: list[dict[str, Any]] = []
    touched: set[stock.Pair] = set()
    for i, c in enumerate(commands):
        where = ("input", str(i))
        row = rows.get((c.source, c.external_id))
        if c.action is HoldAction.PLACE:
            assert c.sku_code is not None and c.location_code is not None and c.quantity is not None
            if c.sku_code not in sku_ids:
                errors.append(UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {c.sku_code!r}", (*where, "skuCode")))
            if c.location_code not in loc_ids:
                errors.append(
                    UserError(ErrorCode.UNKNOWN_LOCATION, f"no location {c.location_code!r}", (*where, "locationCode"))
                )
            if c.sku_code not in sku_ids or c.location_code not in loc_ids:
                continue
            pair = (sku_ids[c.sku_code], loc_ids[c.location_code])
            if row is not None:
                if (row.sku_id, row.location_id, int(row.quantity)) != (*pair, c.quantity):
                    errors.append(
                        UserError(
                            ErrorCode.EVENT_CONFLICT,
                            f"{c.source}/{c.external_id} was already placed with different content",
                            where,
                        )
                    )
                else:
                    results.append(HoldResult(i, EventStatus.DUPLICATE, HoldStatus(row.status)))
                continue
            expires_at = c.expires_at or now + timedelta(seconds=ctx.settings.max_ttl_seconds)
            await conn.execute(
                insert(eh).values(
                    source=c.source,
                    external_id=c.external_id,
                    sku_id=pair[0],
                    location_id=pair[1],
                    quantity=c.quantity,
                    status=HoldStatus.ACTIVE.value,
                    channel_code=c.channel_code,
                    expires_at=expires_at,
                    created_at=now,
                    updated_at=now,
                )
            )
            rows[(c.source, c.external_id)] = (
                await conn.execute(select(eh).where(eh.c.source == c.source, eh.c.external_id == c.external_id))
            ).one()
            await stock.ensure_positions(conn, [pair], now)
            ledger.append(await _move(conn, now, rows[(c.source, c.external_id)], HoldAction.PLACE))
            touched.add(pair)
            results.append(HoldResult(i, EventStatus.APPLIED, HoldStatus.ACTIVE))
            continue
        if row is None:
            errors.append(
                UserError(
                    ErrorCode.RESERVATION_NOT_FOUND, f"no hold {c.source}/{c.external_id}", (*where, "externalId")
                )
            )
            continue
        status = HoldStatus(row.status)
        if status is HoldStatus.ACTIVE and row.expires_at is not None and row.expires_at <= now:
            status = HoldStatus.EXPIRED  # past expiry counts as expired at once, swept or not
        target = _MOVES[c.action][3]
        if status is target or (c.action is HoldAction.RELEASE and status is HoldStatus.EXPIRED):
            results.append(HoldResult(i, EventStatus.DUPLICATE, status))
            continue
        if status is not HoldStatus.ACTIVE:
            code = ErrorCode.RESERVATION_EXPIRED if status is HoldStatus.EXPIRED else ErrorCode.RESERVATION_NOT_ACTIVE
            errors.append(UserError(code, f"hold {c.source}/{c.external_id} is {status.value}", where))
            continue
        ledger.append(await _move(conn, now, row, c.action))
        await conn.execute(update(eh).where(eh.c.id == row.id).values(status=target.value, updated_at=now))
        rows[(c.source, c.external_id)] = (await conn.execute(select(eh).where(eh.c.id == row.id))).one()
        touched.add((row.sku_id, row.location_id))
        results.append(HoldResult(i, EventStatus.APPLIED, target))
    if errors:
        raise Refused(errors)
    await stock.write_ledger(conn, ledger)
    await stock.enqueue_changes(conn, touched, now)
    return results


async def _move(
    conn: AsyncConnection, now: datetime, row: Any, action: HoldAction | None, kind: LedgerKind | None = None
) -> dict[str, Any]:
    """Apply one hold's effect on its position and return the ledger row saying so."""
    if action is None:
        kind, d_reserved, d_committed = kind or LedgerKind.EXTERNAL_HOLD_EXPIRED, -1, 0
    else:
        kind, d_reserved, d_committed, _ = _MOVES[action]
    pair = (int(row.sku_id), int(row.location_id))
    q = int(row.quantity)
    delta = Delta(reserved=d_reserved * q, committed=d_committed * q)
    version = await stock.apply_delta(conn, pair, delta, now)
    return stock.ledger_row(
        kind=kind.value,
        status=EventStatus.APPLIED.value,
        pair=pair,
        quantity=q,
        delta=delta,
        version=version,
        now=now,
        source=row.source,
        reference=f"{row.source}/{row.external_id}",
    )


async def expire_due(conn: AsyncConnection, now: datetime, limit: int = 500) -> int:
    """ACTIVE holds past expiry become EXPIRED and give their units back. Safe with many sweepers."""
    due = (
        select(eh.c.id)
        .where(eh.c.status == HoldStatus.ACTIVE.value, eh.c.expires_at <= now)
        .order_by(eh.c.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r.id for r in await conn.execute(due)]
    if not ids:
        return 0
    won = list(
        await conn.execute(
            update(eh)
            .where(eh.c.id.in_(ids), eh.c.status == HoldStatus.ACTIVE.value)
            .values(status=HoldStatus.EXPIRED.value, updated_at=now)
            .returning(eh)
        )
    )
    won.sort(key=lambda r: (r.sku_id, r.location_id, r.id))
    ledger = [await _move(conn, now, r, None) for r in won]
    await stock.write_ledger(conn, ledger)
    await stock.enqueue_changes(conn, [(r.sku_id, r.location_id) for r in won], now)
    return len(won)
