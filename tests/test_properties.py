"""Property-based (hypothesis): any sequence of reserve, commit, release, extend, inventory events
and the passing of time (the expiry sweeper) keeps the quantities sound.

After every step:
- no quantity that must not go negative does (reserved, committed, unavailable, incoming);
- a successful reserve held, at each position, no more than was available there just before it, and
  its lines hold exactly what was asked; a refused one (or any refused call) changed nothing;
- every position equals the fold of its ledger, and `reserved` equals the lines of the reservations
  still holding stock (the integrity check `stockwire check` runs).

The calls go straight to the services (the GraphQL layer adds nothing to these rules, and each example
starts from an emptied database), on PostgreSQL with a clock the test moves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.db.engine import Database
from app.domain.errors import Refused
from app.domain.events import EventType, InventoryEvent
from app.domain.reservations import RequestedLine
from app.services import catalog, events, integrity, reservations
from app.services.context import Ctx
from app.settings import Settings
from tests.conftest import _truncate

SKUS = ("SKU-A", "SKU-B")
LOCATIONS = ("WH-1", "WH-2")
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


# -- the steps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reserve:
    lines: tuple[tuple[int, int, int | None], ...]  # (sku index, quantity, location index or None)
    ttl: int | None
    idempotency: int  # small, so that keys get reused (same lines or other lines)


@dataclass(frozen=True)
class Change:
    action: str  # commit, release, extend
    which: int  # index into the reservations made so far (modulo), or beyond: an unknown id
    ttl: int = 60


@dataclass(frozen=True)
class Event:
    type: EventType
    sku: int
    location: int
    quantity: int


@dataclass(frozen=True)
class Tick:
    seconds: int


EVENT_TYPES = [
    EventType.RECEIVED,
    EventType.ADJUSTED,
    EventType.COUNTED,
    EventType.SOLD,
    EventType.ORDER_PLACED,
    EventType.ORDER_CANCELLED,
    EventType.SHIPPED,
    EventType.DAMAGED,
    EventType.REPAIRED,
    EventType.WRITTEN_OFF,
    EventType.SAFETY_STOCK_SET,
    EventType.INCOMING,
    EventType.TRANSFER_IN,
]

line = st.tuples(
    st.integers(0, len(SKUS) - 1),
    st.integers(0, 8).map(lambda q: {7: 0, 8: -1}.get(q, q + 1)),  # 1-7 mostly (hypothesis favours 0)
    st.one_of(st.none(), st.integers(0, len(LOCATIONS) - 1)),
)
reserve_step = st.builds(
    Reserve,
    lines=st.lists(line, min_size=1, max_size=3).map(tuple),  # no lines at all: test_hostile_inputs
    ttl=st.integers(-1, 60).map(lambda t: None if t > 30 else t),  # mostly valid, now and then 0 or -1
    idempotency=st.one_of(st.integers(0, 3), st.integers(0, 1000)),
)
step = st.one_of(
    reserve_step,
    reserve_step,  # twice: holds are what the property is about
    st.builds(
        Change,
        action=st.sampled_from(["commit", "release", "extend"]),
        which=st.integers(0, 7),
        ttl=st.integers(0, 30),
    ),
    st.builds(
        Event,
        type=st.sampled_from(EVENT_TYPES),
        sku=st.integers(0, len(SKUS) - 1),
        location=st.integers(0, len(LOCATIONS) - 1),
        quantity=st.integers(0, 17).map(lambda q: {15: 0, 16: -1, 17: -4}.get(q, q + 1)),
    ),
    st.builds(Tick, seconds=st.integers(0, 40)),
)


# -- running a sequence -------------------------------------------------------------------------------

Position = dict[str, int]


async def positions(ctx: Ctx) -> dict[tuple[str, str], Position]:
    sql = text(
        "SELECT s.code AS sku, l.code AS loc, p.on_hand, p.committed, p.reserved, p.unavailable, "
        "p.safety_stock, p.incoming FROM stock_levels p JOIN skus s ON s.id = p.sku_id "
        "JOIN locations l ON l.id = p.location_id"
    )
    async with ctx.db.read() as conn:
        rows = (await conn.execute(sql)).mappings().all()
    return {(r["sku"], r["loc"]): {k: int(r[k]) for k in r if k not in ("sku", "loc")} for r in rows}


def available(p: Position) -> int:
    return p["on_hand"] - p["committed"] - p["reserved"] - p["unavailable"] - p["safety_stock"]


class Run:
    def __init__(self, ctx: Ctx, now: list[datetime], record: Any = None) -> None:
        self.record = record or (lambda _: None)  # hypothesis.event inside a property, else nothing
        self.ctx = ctx
        self.now = now
        self.reservation_ids: list[str] = []
        self.event_number = 0

    async def step(self, s: Any) -> None:
        before = await positions(self.ctx)
        refused = False
        held: tuple[Any, ...] = ()
        try:
            if isinstance(s, Reserve):
                held = await self._reserve(s)
            elif isinstance(s, Change):
                await self._change(s)
            elif isinstance(s, Event):
                await self._event(s)
            else:
                self.now[0] += timedelta(seconds=s.seconds)
                while await reservations.sweep_expired(self.ctx):
                    pass
        except Refused:
            refused = True
        after = await positions(self.ctx)
        # what happened, for --hypothesis-show-statistics (holds must be common for the property to mean much)
        self.record(f"{type(s).__name__}: {'refused' if refused else 'held' if held else 'done'}")
        await self._check(s, before, after, refused, held)

    async def _reserve(self, s: Reserve) -> tuple[Any, ...]:
        request = reservations.ReserveRequest(
            lines=[RequestedLine(SKUS[k], q, None if loc is None else LOCATIONS[loc]) for k, q, loc in s.lines],
            idempotency_key=f"idem-{s.idempotency}",
            ttl_seconds=s.ttl,
        )
        view = await reservations.reserve(self.ctx, request)
        new = view.id not in self.reservation_ids
        if new:
            self.reservation_ids.append(view.id)
        # what was asked, per SKU, is exactly what the lines hold
        asked: dict[str, int] = {}
        for k, q, _ in s.lines:
            asked[SKUS[k]] = asked.get(SKUS[k], 0) + q
        got: dict[str, int] = {}
        for ln in view.lines:
            got[ln.sku_code] = got.get(ln.sku_code, 0) + ln.quantity
        assert got == asked or not new, (asked, got)  # a repeat returns the first reservation as it was
        assert all(q > 0 for _, q, _ in s.lines) and s.lines, "an invalid reserve was accepted"
        return view.lines if new else ()

    async def _change(self, s: Change) -> None:
        rid = (
            self.reservation_ids[s.which % len(self.reservation_ids)]
            if self.reservation_ids and s.which < 7  # 7: an id nobody made
            else "00000000-0000-0000-0000-000000000000"
        )
        if s.action == "commit":
            await reservations.commit(self.ctx, rid, "order")
        elif s.action == "release":
            await reservations.release(self.ctx, rid)
        else:
            await reservations.extend(self.ctx, rid, s.ttl)

    async def _event(self, s: Event) -> None:
        self.event_number += 1
        e = InventoryEvent(
            source="erp",
            external_id=f"e{self.event_number}",
            type=s.type,
            sku_code=SKUS[s.sku],
            location_code=LOCATIONS[s.location],
            quantity=s.quantity,
            occurred_at=self.now[0],
        )
        await events.record_events(self.ctx, [e])

    async def _check(
        self,
        s: Any,
        before: dict[tuple[str, str], Position],
        after: dict[tuple[str, str], Position],
        refused: bool,
        held: tuple[Any, ...],
    ) -> None:
        for key, p in after.items():
            for name in ("reserved", "committed", "unavailable", "incoming"):
                assert p[name] >= 0, (s, key, p)
        if refused:
            assert after == before, f"a refused {s} changed positions"
        if held:
            taken: dict[tuple[str, str], int] = {}
            for ln in held:
                taken[(ln.sku_code, ln.location_code)] = taken.get((ln.sku_code, ln.location_code), 0) + ln.quantity
            for key, q in taken.items():
                was = before.get(key)
                assert was is not None and available(was) >= q, f"held {q} at {key} with {was} before"
                assert after[key]["reserved"] - was["reserved"] == q
        mismatches = await integrity.check(self.ctx)
        assert mismatches == [], (s, mismatches)


async def run_sequence(url: str, steps: list[Any], record: Any = None) -> None:
    await _truncate(url)  # each example starts from an empty database
    now = [START]
    db = Database(url)
    ctx = Ctx(db=db, settings=Settings(database_url=url), clock=lambda: now[0])
    try:
        await catalog.upsert_skus(ctx, [catalog.SkuInput(code=c, name=c) for c in SKUS])
        await catalog.upsert_locations(
            ctx,
            [
                catalog.LocationInput(code=c, name=c, kind=catalog.LocationKind("WAREHOUSE"), priority=i)
                for i, c in enumerate(LOCATIONS)
            ],
        )
        run = Run(ctx, now, record)
        for k in range(len(SKUS)):  # some stock everywhere to start with, so that holds happen
            for loc in range(len(LOCATIONS)):
                await run.step(Event(EventType.RECEIVED, k, loc, 8))
        for s in steps:
            await run.step(s)
    finally:
        await db.dispose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow  # many examples, each on an emptied database
@given(steps=st.lists(step, min_size=4, max_size=25))
def test_no_sequence_holds_beyond_stock_or_drives_a_count_negative(database_url: str, steps: list[Any]) -> None:
    asyncio.run(run_sequence(database_url, steps, event))


def test_a_sequence_that_oversells_on_paper_still_holds_nothing_it_does_not_have(database_url: str) -> None:
    """A worked example of the property: stock sold elsewhere after a hold leaves `available`
    negative, and from then on every reserve there is refused."""
    steps = [
        Event(EventType.RECEIVED, 0, 0, 5),
        Reserve(((0, 4, 0),), None, 1),
        Event(EventType.SOLD, 0, 0, 3),  # a POS sale: onHand 2, reserved 4
        Reserve(((0, 1, 0),), None, 2),  # refused: INSUFFICIENT_STOCK
        Change("commit", 0),
        Event(EventType.SHIPPED, 0, 0, 9),  # ships more than committed: committed clipped at 0
        Tick(1000),
    ]
    asyncio.run(run_sequence(database_url, steps))
