"""Recording inventory events: each applied once, in the same transaction as the position it changes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, stock
from app.db.engine import generic_plans, is_unique_violation
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import (
    EventStatus,
    EventType,
    InventoryEvent,
    LedgerKind,
    decide,
    on_hand_since,
    validate,
)
from app.domain.quantities import INT_MAX, INT_MIN, Delta, Magnitude, Position, excess, grows_out_of_range
from app.services import demand, units
from app.services.context import Ctx


@dataclass(frozen=True, slots=True)
class EventResult:
    index: int
    status: EventStatus
    version: int | None
    drift: int = 0


def _answered(version: int) -> int | None:
    """Versions start at 1: a position no event ever changed (version 0) has no version to answer."""
    return version or None


class _Location(NamedTuple):
    id: int
    count_authority: str | None


class _Recorded(NamedTuple):
    fingerprint: str | None
    version: int


async def _look_up(
    conn: AsyncConnection, sku_codes: set[str], loc_codes: set[str], keys: list[tuple[str, str]]
) -> tuple[dict[str, int], dict[str, _Location], dict[tuple[str, str], _Recorded]]:
    """SKU ids, locations and the events already recorded under these (source, externalId) keys."""
    # asyncpg directly, one round trip: see app/db/pg.py
    ids, found, seen = await pg.look_up(await pg.driver(conn), sorted(sku_codes), sorted(loc_codes), keys)
    return (
        ids,
        {code: _Location(*loc) for code, loc in found.items()},
        {key: _Recorded(*r) for key, r in seen.items()},
    )


def _at(i: int, e: UserError) -> UserError:
    return UserError(e.code, e.message, ("input", str(i), *(e.field or ())))


async def record_events(
    ctx: Ctx, events: list[InventoryEvent], atomic: bool = True
) -> tuple[list[EventResult], list[UserError]]:
    """Apply a batch. Atomic (the default): any error refuses the whole batch and changes nothing.

    Not atomic: events with errors are reported and skipped, the rest apply.
    """
    if len(events) > ctx.settings.max_batch_size:
        raise Refused(
            [UserError(ErrorCode.BATCH_TOO_LARGE, f"at most {ctx.settings.max_batch_size} events per call", ("input",))]
        )
    now = ctx.clock()
    errors: list[UserError] = []
    for i, event in enumerate(events):
        errors += [_at(i, e) for e in validate(event, now)]
    # validation errors are reported together with unknown codes and conflicts, found in the transaction

    async def work(conn: AsyncConnection) -> tuple[list[EventResult], list[UserError]]:
        return await _apply_batch(conn, ctx, events, list(errors), atomic)

    # a batch's statements take arrays of its events: planned once per connection, not per batch
    # (engine.generic_plans says why)
    with generic_plans():
        try:
            return await ctx.db.write(work)
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # another request recorded one of these events between our look-up and our insert:
            # run again, and it will be reported as DUPLICATE (or EVENT_CONFLICT)
            return await ctx.db.write(work)


def _size_after(size: Magnitude, moves: list[tuple[Position, Position, Delta]]) -> Magnitude | None:
    """The SKU's magnitude after `moves` (each: a position before and after its delta), or None when a
    figure would leave what the API can return."""
    # Magnitude.replacing(before, after) for each move, in plain ints (this runs for every event of a
    # batch): on hand above and below 0 from the two positions, claims and incoming by the delta. The
    # caller makes each `after` once, for this check and for the batch's positions
    on_hand, claims, incoming, below_zero = size.on_hand, size.claims, size.incoming, size.below_zero
    for before, after, delta in moves:
        grown = excess(after)
        # a figure left inside an Int is never refused: the position before it need not be measured
        if grown and grows_out_of_range(excess(before), grown):
            return None
        was, now = before.on_hand, after.on_hand
        on_hand += (now if now > 0 else 0) - (was if was > 0 else 0)
        below_zero += (-now if now < 0 else 0) - (-was if was < 0 else 0)
        claims += delta.committed + delta.reserved + delta.unavailable + delta.safety_stock
        incoming += delta.incoming
    after_all = Magnitude(on_hand, claims, incoming, below_zero)
    return None if grows_out_of_range(size.excess, after_all.excess) else after_all


class _Pending:
    """A position's changes of this batch not written yet: summed deltas, how many changed a quantity
    (the version moves by one for each) and the last applied count's time."""

    __slots__ = ("counted_at", "delta", "n")

    def __init__(self) -> None:
        self.delta = Delta()
        self.n = 0
        self.counted_at: datetime | None = None

    def add(self, delta: Delta, moved: bool, counted_at: datetime | None) -> None:
        """`moved`: the delta is not zero (the caller knows: asked once per event)."""
        if moved:
            self.delta = self.delta.plus(delta)
            self.n += 1
        if counted_at is not None:
            self.counted_at = counted_at


async def _flush(
    conn: AsyncConnection,
    pending: dict[stock.Pair, _Pending],
    only: stock.Pair | None,
    now: datetime,
    versions: dict[stock.Pair, int],
) -> None:
    """Write the pending changes (of one position, or all) in one statement, and check the versions
    the database reached are the ones given to their ledger rows."""
    pairs = [only] if only is not None else sorted(pending)
    todo = [(p, pending.pop(p)) for p in pairs if p in pending]
    _check_versions(await stock.apply_summed(conn, _summed(todo), now), versions)


def _summed(todo: list[tuple[stock.Pair, _Pending]]) -> list[tuple[stock.Pair, Delta, int, datetime | None]]:
    return [(p, t.delta, t.n, t.counted_at) for p, t in todo]


def _check_versions(reached: dict[stock.Pair, int], versions: dict[stock.Pair, int]) -> None:
    """The versions the database reached are the ones given to their ledger rows."""
    wrong = {p: v for p, v in reached.items() if v != versions[p]}
    if wrong:  # cannot happen while the rows are locked: never record a version the position lacks
        raise RuntimeError(f"positions reached other versions than recorded: {wrong}")


def _out_of_range(i: int, e: InventoryEvent) -> UserError:
    return UserError(
        ErrorCode.QUANTITY_OUT_OF_RANGE,
        f"{e.type} {e.quantity} would take a figure of {e.sku_code} beyond {INT_MAX} (or below {INT_MIN}), "
        "more than the API can return",
        ("input", str(i), "quantity"),
    )


async def _apply_batch(
    conn: AsyncConnection, ctx: Ctx, events: list[InventoryEvent], errors: list[UserError], atomic: bool
) -> tuple[list[EventResult], list[UserError]]:
    now = ctx.clock()
    bad = {int(e.field[1]) for e in errors if e.field}
    sku_codes = {e.sku_code for e in events}
    loc_codes = {e.location_code for e in events} | {e.to_location_code for e in events if e.to_location_code}
    # (source, externalId) identifies an event: a repeat is a DUPLICATE, a repeat with other content a conflict
    pairs = list({(e.source, e.external_id) for e in events})
    sku_ids, locs, recorded = await _look_up(conn, sku_codes, loc_codes, pairs)
    for i, e in enumerate(events):
        if e.sku_code not in sku_ids:
            errors.append(UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {e.sku_code!r}", ("input", str(i), "skuCode")))
        if e.location_code not in locs:
            errors.append(
                UserError(
                    ErrorCode.UNKNOWN_LOCATION, f"no location {e.location_code!r}", ("input", str(i), "locationCode")
                )
            )
        if e.to_location_code and e.to_location_code not in locs:
            errors.append(
                UserError(
                    ErrorCode.UNKNOWN_LOCATION,
                    f"no location {e.to_location_code!r}",
                    ("input", str(i), "toLocationCode"),
                )
            )

    # B2B (issue 19): quantities reported in a named unit become base units (the unit is kept on the row)
    events, unit_problems = await units.events_in_base_units(conn, events)
    errors += unit_problems
    results: dict[int, EventResult] = {}
    first_in_batch: dict[tuple[str, str], tuple[int, str]] = {}
    repeats: dict[int, int] = {}  # a repeat inside the batch -> the index of its first occurrence
    fingerprints = [e.fingerprint() for e in events]  # one sha256 per event: kept for its ledger row
    for i, e in enumerate(events):
        key = (e.source, e.external_id)
        fp = fingerprints[i]
        seen = recorded.get(key)
        earlier = first_in_batch.get(key)
        if seen is not None or earlier is not None:
            same = (seen.fingerprint if seen is not None else earlier[1]) == fp  # type: ignore[index]
            if not same:
                errors.append(
                    UserError(
                        ErrorCode.EVENT_CONFLICT,
                        f"{e.source}/{e.external_id} was already recorded with different content",
                        ("input", str(i)),
                    )
                )
            else:
                version = _answered(int(seen.version)) if seen is not None else None
                results[i] = EventResult(i, EventStatus.DUPLICATE, version)
                if seen is None:
                    repeats[i] = earlier[0]  # type: ignore[index]
            continue
        first_in_batch[key] = (i, fp)

    bad |= {int(e.field[1]) for e in errors if e.field and len(e.field) > 1}
    if errors and atomic:
        raise Refused(errors)
    todo = [i for i in range(len(events)) if i not in bad and i not in results]

    pairs_touched: set[stock.Pair] = set()
    # each row's columns its event fixes, encoded now, outside the row locks (pg.LedgerRows)
    fixed_of = stock.event_fixed_maker(now)
    fixed: dict[int, pg.FixedColumns] = {}
    for i in todo:
        e = events[i]
        pair = (sku_ids[e.sku_code], locs[e.location_code].id)
        pairs_touched.add(pair)
        to_id = None
        if e.to_location_code:
            to_id = locs[e.to_location_code].id
            pairs_touched.add((pair[0], to_id))
        fixed[i] = fixed_of(
            e.type.value,
            pair[0],
            pair[1],
            e.quantity,
            e.source,
            e.external_id,
            e.occurred_at,
            e.reason,
            e.reference,
            to_id,
            e.expected_at,
            fingerprints[i],
            e.unit,
        )
    # every figure must stay an Int the API can return, per position and summed over a SKU's positions
    # (`sizes`); and what the stored ledger holds after each count's time, read once for the whole
    # batch (before any of its rows are written: those are in `applied` below). Read with the lock,
    # in its statement (one round trip fewer in the row locks, see stock.lock_sized).
    counts = [i for i in todo if events[i].type is EventType.COUNTED]
    locked, sizes, after_counts = await stock.lock_sized(
        conn,
        pairs_touched,
        now,
        [((sku_ids[events[i].sku_code], locs[events[i].location_code].id), events[i].occurred_at) for i in counts],
    )
    positions = {p: lp.position for p, lp in locked.items()}
    counted = {p: lp.counted_at for p, lp in locked.items()}
    versions = {p: lp.version for p, lp in locked.items()}
    backordered = {p: lp.backordered for p, lp in locked.items()}
    stored_since = dict(zip(counts, after_counts, strict=True))

    ledger = pg.LedgerRows()
    changed: set[stock.Pair] = set()
    # the positions are locked: each change's version is the next one, known here. Their changes are
    # summed per position and written in one statement at the end (`_Pending`), except where arriving
    # units fill backorders (stock.apply_delta does that, one change at a time)
    pending: dict[stock.Pair, _Pending] = {}

    def change(pair: stock.Pair, delta: Delta, moved: bool, after: Position, counted_at: datetime | None) -> None:
        """`delta` (`moved`: not zero) applied to the position, which it takes to `after`, when it fills
        no backorder (`fill` then): summed into the position's pending change."""
        todo_pair = pending.get(pair)
        if todo_pair is None:
            todo_pair = pending[pair] = _Pending()
        todo_pair.add(delta, moved, counted_at)
        if moved:
            versions[pair] += 1
        positions[pair] = after

    async def fill(pair: stock.Pair, delta: Delta, after: Position, counted_at: datetime | None) -> None:
        """`change` for a delta whose arriving units fill backorders: its own statement, after the
        position's pending change. Not a coroutine for every event: only these wait on the database."""
        await _flush(conn, pending, pair, now, versions)
        versions[pair] = await stock.apply_delta(conn, pair, delta, now, counted_at)
        positions[pair] = after

    # on-hand effects applied earlier in this batch, not in the ledger table until the batch ends: a
    # late count must keep those that occurred after it exactly like the ones already stored
    applied: dict[stock.Pair, list[tuple[datetime, int]]] = defaultdict(list)
    for i in todo:
        e = events[i]
        loc = locs[e.location_code]
        pair = (sku_ids[e.sku_code], loc.id)
        since = 0
        if e.type is EventType.COUNTED:
            since = stored_since[i] + on_hand_since(applied[pair], e.occurred_at)
        before = positions[pair]
        decision = decide(e, before, counted[pair], loc.count_authority, since)
        delta = decision.effect.delta
        moved = not delta.is_zero  # asked once: a dataclass comparison
        after = before.plus(delta) if moved else before
        to_id = locs[e.to_location_code].id if e.to_location_code else None
        arriving: tuple[stock.Pair, Delta, Position] | None = None
        if e.type is EventType.TRANSFER_OUT and to_id is not None:
            dest = (pair[0], to_id)
            arriving = (dest, Delta(incoming=e.quantity), positions[dest].plus(Delta(incoming=e.quantity)))
            size = _size_after(sizes[pair[0]], [(before, after, delta), (positions[dest], arriving[2], arriving[1])])
        elif moved:
            size = _size_after(sizes[pair[0]], [(before, after, delta)])
        else:
            size = sizes[pair[0]]  # nothing moves: no figure can leave an Int
        if size is None:
            errors.append(_out_of_range(i, e))
            if atomic:
                raise Refused(errors)
            continue
        sizes[pair[0]] = size
        if moved or decision.counted_at is not None:
            if delta.incoming < 0 and backordered[pair] > 0:
                await fill(pair, delta, after, decision.counted_at)
            else:
                change(pair, delta, moved, after, decision.counted_at)
            if delta.on_hand:
                applied[pair].append((e.occurred_at, delta.on_hand))
            if decision.counted_at is not None:
                counted[pair] = decision.counted_at
            if moved:
                changed.add(pair)
        ledger.add(fixed[i], stock.decided_columns(decision.status.value, delta, decision.effect.drift, versions[pair]))
        results[i] = EventResult(i, decision.status, _answered(versions[pair]), decision.effect.drift)
        if arriving is not None:
            # the far side: the units are now expected at the destination
            dest, incoming, dest_after = arriving
            change(dest, incoming, True, dest_after, None)  # expected units: no backorder to fill
            changed.add(dest)
            ledger.add_row(
                stock.ledger_row(
                    kind=LedgerKind.TRANSFER_EXPECTED.value,
                    status=EventStatus.APPLIED.value,
                    pair=dest,
                    quantity=e.quantity,
                    delta=incoming,
                    version=versions[dest],
                    now=now,
                    source=e.source,
                    occurred_at=e.occurred_at,
                    reference=e.reference,
                    reason=f"transfer {e.external_id} from {e.location_code}",
                )
            )
    # the pending changes, the ledger rows, the outbox rows and the reported sales and orders (issue 18:
    # demand under no channel, demand.ledger_sales): one statement (one round trip in the locks)
    last = [(p, pending.pop(p)) for p in sorted(pending)]
    sales = demand.ledger_sales(ledger.demand)
    reached, dynamic = await stock.apply_and_record(
        conn, _summed(last), now, ledger, changed, sales, demand.half_life_seconds()
    )
    _check_versions(reached, versions)
    if dynamic and sales:  # the sold SKUs' dynamic buffers follow their demand (as demand.note_sales)
        await demand.refresh_buffers(conn, now, sku_ids={s for s, _ in sales})
    for i, first in repeats.items():
        if first in results:  # answered like a later repeat: the version its first occurrence recorded
            results[i] = replace(results[i], version=results[first].version)
    return [results[i] for i in sorted(results)], errors
