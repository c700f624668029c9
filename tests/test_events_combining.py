"""Combining recorded batches (issue 15, target 5): concurrent recordInventoryEvents batches applied in
one transaction, each answered as if it ran alone after the batches that arrived before it. Real
PostgreSQL; the batches queue behind one held on a row lock, so the test decides what combines."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import EventType, InventoryEvent
from app.services import events, integrity
from app.services.events import EventResult
from tests.conftest import Api
from tests.helpers import catalogue, receive

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
Answer = tuple[list[EventResult], list[UserError]] | Refused


def _event(
    side: str, n: int, type_: EventType, sku: int, loc: str, quantity: int, minutes: float, **extra: Any
) -> InventoryEvent:
    return InventoryEvent(
        source=f"erp-{side}",
        external_id=f"e{n}",
        type=type_,
        sku_code=f"{side}{sku}",
        location_code=loc,
        quantity=quantity,
        occurred_at=T0 + timedelta(minutes=minutes),
        **extra,
    )


def _batches(side: str, seed: int) -> list[list[InventoryEvent]]:
    """Five batches over SKUs <side>1..<side>4 at WH-1 and WH-2: a mix of types, late events, counts
    (some older than events before them), transfers, a repeat inside a batch and an unknown SKU in the
    last (not atomic) one. The same seed makes the same batches on either side."""
    rng = random.Random(seed)
    kinds = [EventType.SOLD, EventType.RECEIVED, EventType.ADJUSTED, EventType.ORDER_PLACED, EventType.SHIPPED]
    out: list[list[InventoryEvent]] = []
    n = 0
    for b in range(5):
        batch: list[InventoryEvent] = []
        for _ in range(30):
            n += 1
            sku, loc, minutes = rng.randint(1, 4), rng.choice(["WH-1", "WH-2"]), rng.uniform(0, 120)
            roll = rng.random()
            if roll < 0.1:
                batch.append(_event(side, n, EventType.COUNTED, sku, loc, rng.randint(0, 80), minutes))
            elif roll < 0.2:
                other = "WH-2" if loc == "WH-1" else "WH-1"
                batch.append(_event(side, n, EventType.TRANSFER_OUT, sku, loc, rng.randint(1, 5), minutes,
                                    to_location_code=other))  # fmt: skip
            else:
                kind = rng.choice(kinds)
                quantity = rng.randint(-5, 5) or 1 if kind is EventType.ADJUSTED else rng.randint(1, 9)
                batch.append(_event(side, n, kind, sku, loc, quantity, minutes))
        batch.append(batch[3])  # a repeat inside the batch: DUPLICATE, with its first occurrence's version
        if b == 4:
            batch.append(_event(side, 10_000, EventType.SOLD, 9, "WH-1", 1, 5))  # unknown SKU
        out.append(batch)
    return out


async def _answer(api: Api, batch: list[InventoryEvent], atomic: bool = True) -> Answer:
    try:
        return await events.record_events(api.ctx, batch, atomic)
    except Refused as refused:
        return refused


@asynccontextmanager
async def _held(api: Api, sku: str) -> AsyncIterator[None]:
    """Another transaction holds this SKU's positions: the batch in flight waits on them, so the batches
    started meanwhile queue behind it and become the next transaction, in arrival order."""
    async with api.ctx.db.begin() as other:
        await other.execute(
            text("SELECT 1 FROM stock_levels WHERE sku_id = (SELECT id FROM skus WHERE code = :c) FOR UPDATE"),
            {"c": sku},
        )
        yield


async def _queued(api: Api, first: list[InventoryEvent], rest: list[tuple[list[InventoryEvent], bool]], hold: str
                  ) -> list[Answer]:  # fmt: skip
    """`first` runs alone and waits on `hold`'s row lock; `rest` queue behind it meanwhile, in order."""
    async with _held(api, hold):
        head = asyncio.create_task(_answer(api, first))
        await asyncio.sleep(0.05)
        tasks = []
        for batch, atomic in rest:
            tasks.append(asyncio.create_task(_answer(api, batch, atomic)))
            await asyncio.sleep(0.01)  # each queued before the next: the arrival order is the list's
        await asyncio.sleep(0.05)
        assert not head.done() and not any(t.done() for t in tasks)
    return [await head, *[await t for t in tasks]]


def _comparable(answer: Answer, side: str) -> Any:
    if isinstance(answer, Refused):
        return ("refused", [(e.code, e.message.replace(side, "X"), e.field) for e in answer.errors])
    results, errors = answer
    return (results, [(e.code, e.message.replace(side, "X"), e.field) for e in errors])


async def _positions(api: Api, side: str) -> list[tuple[Any, ...]]:
    rows = await api.sql(
        "SELECT replace(s.code, :side, 'X'), l.code, p.on_hand, p.committed, p.reserved, p.unavailable, "
        "p.incoming, p.version FROM stock_levels p JOIN skus s ON s.id = p.sku_id "
        "JOIN locations l ON l.id = p.location_id WHERE s.code LIKE :like ORDER BY 1, 2",
        side=side,
        like=f"{side}%",
    )
    return [tuple(r) for r in rows]


async def _instants(api: Api, source: str) -> dict[str, datetime]:
    """Each recorded event's transaction instant (received_at), by externalId."""
    rows = await api.sql("SELECT external_id, received_at FROM inventory_events WHERE source = :s", s=source)
    return {r[0]: r[1] for r in rows}


async def _stocked(api: Api, side: str) -> None:
    await catalogue(api, skus=[f"{side}{i}" for i in range(1, 5)], locations=[("WH-1", 10), ("WH-2", 20)])
    for i in range(1, 5):
        for loc in ("WH-1", "WH-2"):
            await receive(api, f"{side}{i}", loc, 50)


async def test_combined_batches_answer_and_end_as_one_by_one_in_arrival_order(api: Api) -> None:
    await _stocked(api, "A")
    await _stocked(api, "B")
    alone_batches, combined_batches = _batches("A", 7), _batches("B", 7)
    # side A: one batch at a time, each its own transaction
    alone = [await _answer(api, b, atomic=i < 4) for i, b in enumerate(alone_batches)]
    # side B: the first batch waits on a row lock, the other four queue and go in one transaction
    combined = await _queued(
        api, combined_batches[0], [(b, i < 3) for i, b in enumerate(combined_batches[1:])], hold="B1"
    )
    assert [_comparable(a, "A") for a in alone] == [_comparable(c, "B") for c in combined]
    assert not any(isinstance(a, Refused) for a in alone)
    last = combined[-1]
    assert not isinstance(last, Refused) and [e.code for e in last[1]] == [ErrorCode.UNKNOWN_SKU]
    assert await _positions(api, "A") == await _positions(api, "B")
    assert await integrity.check(api.ctx) == []
    # they were combined: the four queued batches' events share one transaction's instant
    instants = await _instants(api, "erp-B")
    first_batch = {e.external_id for e in combined_batches[0]}
    assert len({at for key, at in instants.items() if key not in first_batch}) == 1
    assert len({at for key, at in instants.items() if key in first_batch}) == 1
    assert len(set(instants.values())) == 2


async def test_an_atomic_batch_refused_in_the_locks_changes_nothing_and_the_others_apply(api: Api) -> None:
    await _stocked(api, "A")
    before = await _positions(api, "A")
    first = [_event("A", 1, EventType.SOLD, 1, "WH-1", 2, 1)]
    ok_before = [
        _event("A", 2, EventType.ADJUSTED, 2, "WH-1", 10**9, 2),
        _event("A", 6, EventType.ADJUSTED, 2, "WH-2", 10**9, 2),
    ]
    # its first event applies in the transaction, its second takes A2's total past an Int: refused whole
    too_much = [
        _event("A", 3, EventType.RECEIVED, 3, "WH-1", 7, 3),
        _event("A", 4, EventType.ADJUSTED, 2, "WH-1", 10**9, 4),
    ]
    ok_after = [_event("A", 5, EventType.SOLD, 2, "WH-1", 1, 5)]
    answers = await _queued(api, first, [(ok_before, True), (too_much, True), (ok_after, True)], hold="A1")
    refused = answers[2]
    assert isinstance(refused, Refused)
    assert [(e.code, e.field) for e in refused.errors] == [
        (ErrorCode.QUANTITY_OUT_OF_RANGE, ("input", "1", "quantity"))
    ]
    # judged after the batch before it: A2 holds 10**9 + 50 at each location then, and 10**9 more would
    # take the SKU's total past an Int (alone, at 100 in all, it would not)
    applied = [a for i, a in enumerate(answers) if i != 2]
    assert [[r.status.value for r in a[0]] for a in applied if not isinstance(a, Refused)] == [
        ["APPLIED"],
        ["APPLIED", "APPLIED"],
        ["APPLIED"],
    ]
    after = {(r[0], r[1]): r for r in await _positions(api, "A")}
    start = {(r[0], r[1]): r for r in before}
    assert after[("X3", "WH-1")] == start[("X3", "WH-1")]  # the refused batch's first event did not stay
    assert after[("X2", "WH-1")][2] == start[("X2", "WH-1")][2] + 10**9 - 1
    assert after[("X1", "WH-1")][2] == start[("X1", "WH-1")][2] - 2
    instants = await _instants(api, "erp-A")
    assert set(instants) == {"e1", "e2", "e6", "e5"}
    assert instants["e2"] == instants["e6"] == instants["e5"]  # the two left were run again together
    assert await integrity.check(api.ctx) == []


async def test_a_batch_refused_before_the_locks_leaves_the_others_combined(api: Api) -> None:
    await _stocked(api, "A")
    first = [_event("A", 1, EventType.SOLD, 1, "WH-1", 1, 1)]
    good = [_event("A", 2, EventType.SOLD, 2, "WH-1", 1, 1), _event("A", 3, EventType.SOLD, 3, "WH-1", 1, 1)]
    unknown = [_event("A", 4, EventType.SOLD, 2, "WH-1", 1, 1), _event("A", 5, EventType.SOLD, 9, "WH-1", 1, 1)]
    lenient = [_event("A", 6, EventType.SOLD, 4, "WH-1", 1, 1), _event("A", 7, EventType.SOLD, 9, "WH-2", 1, 1)]
    answers = await _queued(api, first, [(good, True), (unknown, True), (lenient, False)], hold="A1")
    refused = answers[2]
    assert isinstance(refused, Refused) and [e.code for e in refused.errors] == [ErrorCode.UNKNOWN_SKU]
    partial = answers[3]
    assert not isinstance(partial, Refused)
    assert [(r.index, r.status.value) for r in partial[0]] == [(0, "APPLIED")]
    assert [(e.code, e.field) for e in partial[1]] == [(ErrorCode.UNKNOWN_SKU, ("input", "1", "skuCode"))]
    instants = await _instants(api, "erp-A")
    assert set(instants) == {"e1", "e2", "e3", "e6"}
    assert instants["e2"] == instants["e3"] == instants["e6"] != instants["e1"]
    assert await integrity.check(api.ctx) == []


async def test_a_batch_resending_a_queued_batchs_event_waits_and_finds_it_recorded(api: Api) -> None:
    await _stocked(api, "A")
    first = [_event("A", 1, EventType.SOLD, 1, "WH-1", 1, 1)]
    original = [_event("A", 2, EventType.SOLD, 2, "WH-1", 3, 1)]
    behind = [_event("A", 3, EventType.SOLD, 3, "WH-1", 1, 1)]
    resent = [original[0], _event("A", 4, EventType.SOLD, 4, "WH-1", 1, 1)]
    conflict = [_event("A", 2, EventType.SOLD, 2, "WH-1", 4, 1)]  # e2 again, other content
    answers = await _queued(api, first, [(original, True), (resent, True), (behind, True), (conflict, True)], "A1")
    got = answers[2]
    assert not isinstance(got, Refused)
    sold = answers[1]
    assert not isinstance(sold, Refused)
    # answered as a repeat: DUPLICATE, the version the first recording gave
    assert [(r.status.value, r.version) for r in got[0]] == [("DUPLICATE", sold[0][0].version), ("APPLIED", 2)]
    refused = answers[4]
    assert isinstance(refused, Refused) and [e.code for e in refused.errors] == [ErrorCode.EVENT_CONFLICT]
    instants = await _instants(api, "erp-A")
    # the resending batch, and the one behind it (arrival order), went in the next transaction
    assert instants["e2"] != instants["e4"] == instants["e3"]
    ((units,),) = await api.sql(
        "SELECT on_hand FROM stock_levels WHERE sku_id = (SELECT id FROM skus WHERE code = 'A2') "
        "AND location_id = (SELECT id FROM locations WHERE code = 'WH-1')"
    )
    assert units == 50 - 3  # sold once
    assert await integrity.check(api.ctx) == []


async def test_a_caller_gone_while_queued_leaves_the_others_their_events(api: Api) -> None:
    await _stocked(api, "A")
    first = [_event("A", 1, EventType.SOLD, 1, "WH-1", 1, 1)]
    async with _held(api, "A1"):
        head = asyncio.create_task(_answer(api, first))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(_answer(api, [_event("A", 2, EventType.SOLD, 2, "WH-1", 1, 1)]))
        await asyncio.sleep(0.01)
        stays = asyncio.create_task(_answer(api, [_event("A", 3, EventType.SOLD, 3, "WH-1", 1, 1)]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.05)
    assert not isinstance(await head, Refused)
    assert not isinstance(await stays, Refused)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert set(await _instants(api, "erp-A")) == {"e1", "e3"}
    assert await integrity.check(api.ctx) == []


async def test_combining_off_runs_each_batch_in_its_own_transaction(api: Api) -> None:
    api.ctx.settings.combine_events = 0
    await _stocked(api, "A")
    async with _held(api, "A1"):  # all four wait on the lock, each in a transaction of its own
        tasks = []
        for n in (1, 2, 3, 4):
            tasks.append(asyncio.create_task(_answer(api, [_event("A", n, EventType.SOLD, 1, "WH-1", 1, n)])))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)
    assert not any(isinstance(a, Refused) for a in [await t for t in tasks])
    assert len(set((await _instants(api, "erp-A")).values())) == 4
