"""Combining (issue 15, target 2): a hot position's checkouts held together, one transaction per batch,
keeping every promise of one-by-one holds in arrival order. Real PostgreSQL; the pure decision first."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from app.domain.combining import Verdict, accepted_units, decide
from app.domain.errors import ErrorCode, Refused
from app.domain.reservations import RequestedLine
from app.services import integrity, reservations
from app.services.views import ReservationView
from tests.conftest import Api
from tests.helpers import RESERVE, catalogue, receive
from tests.test_promises_stock import ClockedApi, clocked  # noqa: F401 (the fixture)

# --- the decision, pure ---------------------------------------------------------------------------


def test_each_request_is_judged_against_what_the_earlier_accepted_ones_left() -> None:
    verdicts = decide(10, [4, 7, 3, 5, 1])
    assert verdicts == [Verdict(True, 10), Verdict(False, 6), Verdict(True, 6), Verdict(False, 3), Verdict(True, 3)]
    assert accepted_units(verdicts, [4, 7, 3, 5, 1]) == 8


def test_a_refusal_reports_no_negative_figure_and_takes_nothing() -> None:
    assert decide(-3, [1, 2]) == [Verdict(False, 0), Verdict(False, 0)]
    assert decide(0, [1]) == [Verdict(False, 0)]
    assert decide(5, [5, 1]) == [Verdict(True, 5), Verdict(False, 0)]
    assert decide(3, []) == []


def test_a_hold_of_no_units_is_not_a_request() -> None:
    with pytest.raises(ValueError):
        decide(3, [0])


def test_the_decision_equals_holds_run_one_by_one() -> None:
    """Against a reference: the conditional UPDATE (`available >= q`) applied to each request in turn."""
    rng = random.Random(15)
    for _ in range(500):
        available = rng.randint(-5, 40)
        quantities = [rng.randint(1, 9) for _ in range(rng.randint(0, 20))]
        left, expected = available, []
        for q in quantities:
            expected.append(Verdict(left >= q, max(left, 0)))
            left -= q if left >= q else 0
        verdicts = decide(available, quantities)
        assert verdicts == expected
        assert accepted_units(verdicts, quantities) == available - left


# --- the service, on PostgreSQL -------------------------------------------------------------------


def _request(quantity: int, key: str, sku: str = "SKU-1", loc: str = "WH-1") -> reservations.ReserveRequest:
    return reservations.ReserveRequest([RequestedLine(sku, quantity, loc)], key, cart_ref=f"cart-{key}")


async def _outcome(api: Api, quantity: int, key: str) -> ReservationView | Refused:
    try:
        return await reservations.reserve(api.ctx, _request(quantity, key))
    except Refused as refused:
        return refused


def _one_by_one(available: int, quantities: list[int]) -> list[str | None]:
    """What holds run one at a time in this order answer: None (held) or the refusal's message."""
    answers: list[str | None] = []
    for q in quantities:
        if available >= q:
            available -= q
            answers.append(None)
        else:
            answers.append(f"SKU-1: {q} requested at WH-1, {max(available, 0)} available")
    return answers


def _answers(outcomes: list[ReservationView | Refused]) -> list[str | None]:
    answers: list[str | None] = []
    for o in outcomes:
        if isinstance(o, Refused):
            assert [e.code for e in o.errors] == [ErrorCode.INSUFFICIENT_STOCK]
            answers.append(o.errors[0].message)
        else:
            answers.append(None)
    return answers


async def _rows(api: Api, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await api.sql(sql, **params)]


async def _assert_consistent(api: Api, held_units: int) -> None:
    """No oversell, the position equals its ledger's fold, versions without gaps, one line per hold."""
    assert await integrity.check(api.ctx) == []
    ((on_hand, reserved),) = await _rows(api, "SELECT on_hand, reserved FROM stock_levels")
    assert reserved == held_units <= on_hand
    ((lines, line_units),) = await _rows(
        api,
        "SELECT count(*), coalesce(sum(l.quantity), 0) FROM reservation_lines l "
        "JOIN reservations r ON r.id = l.reservation_id WHERE r.status = 'ACTIVE'",
    )
    assert line_units == held_units
    ((active,),) = await _rows(api, "SELECT count(*) FROM reservations WHERE status = 'ACTIVE'")
    assert active == lines
    versions = [v for (v,) in await _rows(api, "SELECT version FROM inventory_events ORDER BY version")]
    assert versions == list(range(1, len(versions) + 1))


@asynccontextmanager
async def _position_locked(api: Api) -> AsyncIterator[None]:
    """Another transaction holds the position's row lock: the batch in flight waits on it, so the
    reserves started meanwhile all queue behind it and become the next batch, in arrival order."""
    async with api.ctx.db.begin() as other:
        await other.execute(text("SELECT 1 FROM stock_levels FOR UPDATE"))
        yield


async def _queued(calls: list[Callable[[], Coroutine[Any, Any, Any]]]) -> list[asyncio.Task[Any]]:
    tasks = []
    for call in calls:
        tasks.append(asyncio.create_task(call()))
        await asyncio.sleep(0.01)  # each queued before the next: the arrival order is the list's
    return tasks


@pytest.mark.parametrize("in_flight", [1, 2, 3])
async def test_200_concurrent_reserves_on_one_sku_hold_exactly_what_one_by_one_holds_would(
    api: Api, in_flight: int
) -> None:
    api.ctx.settings.combine_in_flight = in_flight  # 2: the next batch starts while one holds the lock
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 250)
    rng = random.Random(200)
    quantities = [rng.choice([1, 1, 1, 2, 3, 5]) for _ in range(200)]
    assert sum(quantities) > 250
    # each task reaches its position's queue without awaiting anything first, so creation order is arrival
    # order: the first runs alone, the other 199 queue and go in batches of up to 64
    outcomes = await asyncio.gather(*(_outcome(api, q, f"k{i}") for i, q in enumerate(quantities)))
    assert _answers(outcomes) == _one_by_one(250, quantities)
    held = [o for o in outcomes if isinstance(o, ReservationView)]
    held_units = sum(q for q, o in zip(quantities, outcomes, strict=True) if isinstance(o, ReservationView))
    assert held_units <= 250
    assert all(
        o.lines[0].quantity == q for q, o in zip(quantities, outcomes, strict=True) if not isinstance(o, Refused)
    )
    await _assert_consistent(api, held_units)
    # each reservation's ledger row, with its own units, versions in arrival order
    rows = await _rows(
        api,
        "SELECT e.reservation_id, e.quantity, e.version, e.reference FROM inventory_events e "
        "WHERE e.kind = 'RESERVED' ORDER BY e.version",
    )
    assert [r[0] for r in rows] == [o.id for o in held]
    assert [r[1] for r in rows] == [o.lines[0].quantity for o in held]
    assert [r[3] for r in rows] == [o.cart_ref for o in held]
    # they were combined: fewer transactions (one instant each) than holds
    ((instants,),) = await _rows(api, "SELECT count(DISTINCT created_at) FROM reservations")
    assert instants < len(held) / 10
    # refused attempts left no reservation behind
    ((count,),) = await _rows(api, "SELECT count(*) FROM reservations")
    assert count == len(held)


async def test_a_batch_answers_in_arrival_order_with_the_exact_shortfall(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 11)
    quantities = [4, 7, 3, 5, 1]
    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 1, "first"))  # the batch in flight, waiting on the lock
        await asyncio.sleep(0.05)
        tasks = await _queued([lambda q=q, i=i: _outcome(api, q, f"k{i}") for i, q in enumerate(quantities)])
        await asyncio.sleep(0.05)
        assert not first.done() and not any(t.done() for t in tasks)
    assert isinstance(await first, ReservationView)
    outcomes = [await t for t in tasks]
    assert _answers(outcomes) == [
        None,
        "SKU-1: 7 requested at WH-1, 6 available",
        None,
        "SKU-1: 5 requested at WH-1, 3 available",
        None,
    ]
    await _assert_consistent(api, 1 + 4 + 3 + 1)
    # the second batch was one transaction: one instant for its three holds, versions in arrival order
    rows = await _rows(
        api,
        "SELECT r.idempotency_key, e.version FROM inventory_events e JOIN reservations r ON r.id = e.reservation_id "
        "ORDER BY e.version",
    )
    assert rows == [("first", 2), ("k0", 3), ("k2", 4), ("k4", 5)]
    ((instants,),) = await _rows(
        api, "SELECT count(DISTINCT created_at) FROM reservations WHERE idempotency_key <> 'first'"
    )
    assert instants == 1


async def test_repeats_of_one_key_inside_a_batch_and_across_batches_hold_once(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)
    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 1, "first"))
        await asyncio.sleep(0.05)
        tasks = await _queued(
            [
                lambda: _outcome(api, 2, "same"),
                lambda: _outcome(api, 3, "other"),
                lambda: _outcome(api, 2, "same"),  # a retry inside the same queue
                lambda: _outcome(api, 5, "same"),  # the key again for another request
                lambda: _outcome(api, 1, "first"),  # a retry of the batch in flight
            ]
        )
    await first
    same, other, again, conflict, first_again = [await t for t in tasks]
    assert isinstance(same, ReservationView) and isinstance(again, ReservationView)
    assert again.id == same.id and again.lines == same.lines
    assert isinstance(other, ReservationView)
    assert isinstance(conflict, Refused)
    assert [e.code for e in conflict.errors] == [ErrorCode.IDEMPOTENCY_CONFLICT]
    assert isinstance(first_again, ReservationView)
    assert first_again.id == (await first).id  # type: ignore[union-attr]
    # across batches: a later retry answers the same reservation and holds nothing more
    later = await _outcome(api, 2, "same")
    assert isinstance(later, ReservationView) and later.id == same.id
    await _assert_consistent(api, 1 + 2 + 3)
    assert await _rows(api, "SELECT idempotency_key FROM reservations ORDER BY 1") == [
        ("first",),
        ("other",),
        ("same",),
    ]


async def test_a_refused_attempt_is_not_remembered_and_its_key_can_hold_later(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 2, "a"))
        await asyncio.sleep(0.05)
        tasks = await _queued([lambda: _outcome(api, 5, "b"), lambda: _outcome(api, 1, "c")])
    assert isinstance(await first, ReservationView)
    refused, held = [await t for t in tasks]
    assert _answers([refused, held]) == ["SKU-1: 5 requested at WH-1, 1 available", None]
    assert await _rows(api, "SELECT idempotency_key FROM reservations ORDER BY 1") == [("a",), ("c",)]
    await reservations.release(api.ctx, (await first).id)  # type: ignore[union-attr]
    retried = await _outcome(api, 2, "b")  # the refused key, now for what there is
    assert isinstance(retried, ReservationView)
    await _assert_consistent(api, 1 + 2)


async def test_a_caller_gone_while_queued_or_in_flight_leaves_the_others_their_holds(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)
    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 1, "first"))
        await asyncio.sleep(0.05)
        tasks = await _queued([lambda i=i: _outcome(api, 1, f"k{i}") for i in range(4)])
        # the first found the position idle, so it runs the ordinary path in its own task: cancelled
        # while it waits on the row lock, its transaction rolls back (as any ordinary reserve's would)
        first.cancel()
        tasks[1].cancel()  # queued: it never holds
    outcomes = [await t for t in (tasks[0], tasks[2], tasks[3])]
    assert all(isinstance(o, ReservationView) for o in outcomes)
    for gone in (first, tasks[1]):
        with pytest.raises(asyncio.CancelledError):
            await gone
    keys = [k for (k,) in await _rows(api, "SELECT idempotency_key FROM reservations ORDER BY 1")]
    assert keys == ["k0", "k2", "k3"]
    await _assert_consistent(api, 3)


async def test_other_requests_and_unknown_codes_go_the_ordinary_way(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    await receive(api, "SKU-1", "WH-1", 5)
    unknown = await _outcome_of(api, reservations.ReserveRequest([RequestedLine("NOPE", 1, "WH-1")], "u"))
    assert isinstance(unknown, Refused) and [e.code for e in unknown.errors] == [ErrorCode.UNKNOWN_SKU]
    # a position that does not exist yet: the ordinary refusal
    none_yet = await _outcome_of(api, reservations.ReserveRequest([RequestedLine("SKU-2", 1, "WH-1")], "n"))
    assert isinstance(none_yet, Refused) and none_yet.errors[0].message == "SKU-2: 1 requested at WH-1, 0 available"
    # two lines: the ordinary path, next to combined ones
    results = await asyncio.gather(
        _outcome(api, 1, "one"),
        _outcome_of(api, reservations.ReserveRequest([RequestedLine("SKU-1", 1)], "two")),  # no location named
        _outcome(api, 1, "three"),
    )
    assert all(isinstance(r, ReservationView) for r in results)
    await _assert_consistent(api, 3)
    assert await integrity.check(api.ctx) == []


async def _outcome_of(api: Api, request: reservations.ReserveRequest) -> ReservationView | Refused:
    try:
        return await reservations.reserve(api.ctx, request)
    except Refused as refused:
        return refused


async def test_concurrent_reserves_over_graphql_never_oversell(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 30)

    async def one(i: int) -> dict[str, Any]:
        payload = {
            "lines": [{"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": 1 + i % 2}],
            "idempotencyKey": f"g{i}",
        }
        data = await api.ok(RESERVE, input=payload)
        result: dict[str, Any] = data["reserve"]
        return result

    results = await asyncio.gather(*(one(i) for i in range(40)))
    held = [r for r in results if r["reservation"]]
    refused = [r for r in results if not r["reservation"]]
    assert all(r["userErrors"][0]["code"] == "INSUFFICIENT_STOCK" for r in refused)
    units = sum(r["reservation"]["lines"][0]["quantity"] for r in held)
    assert units <= 30 and units >= 28  # a refusal leaves less than its request behind (1 or 2 units)
    await _assert_consistent(api, units)


async def test_an_error_in_a_batch_fails_every_member_and_holds_nothing(api: Api) -> None:
    from sqlalchemy.exc import DBAPIError

    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)

    async def too_long_scope() -> ReservationView | Refused:
        # a scope longer than its column: the batch's claim statement fails in the database
        request = reservations.ReserveRequest([RequestedLine("SKU-1", 1, "WH-1")], "bad", idempotency_scope="s" * 150)
        return await _outcome_of(api, request)

    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 1, "first"))
        await asyncio.sleep(0.05)
        tasks = await _queued([lambda: _outcome(api, 1, "a"), too_long_scope, lambda: _outcome(api, 1, "b")])
    assert isinstance(await first, ReservationView)
    for task in tasks:
        with pytest.raises(DBAPIError):
            await task
    assert await _rows(api, "SELECT idempotency_key FROM reservations") == [("first",)]
    await _assert_consistent(api, 1)
    assert isinstance(await _outcome(api, 1, "a"), ReservationView)  # the next batch runs as usual
    await _assert_consistent(api, 2)


async def test_a_batch_gives_back_an_expired_hold_before_it_decides(clocked: ClockedApi) -> None:  # noqa: F811
    """The batch's own expiry check (folded into its look-up): a hold that expired while the batch queued
    is given back before the batch decides, so its units go to the queued buyers."""
    api = clocked
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 4)
    old = await reservations.reserve(
        api.ctx, reservations.ReserveRequest([RequestedLine("SKU-1", 3, "WH-1")], "old", ttl_seconds=1)
    )
    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 1, "a"))  # the ordinary path, the last free unit
        await asyncio.sleep(0.05)
        tasks = await _queued([lambda: _outcome(api, 1, "b"), lambda: _outcome(api, 2, "c")])
        api.now[0] += timedelta(seconds=2)  # the old hold expires while they queue; no sweeper runs
    assert isinstance(await first, ReservationView)
    assert _answers([await t for t in tasks]) == [None, None]
    assert await _rows(api, "SELECT status FROM reservations WHERE id = :r", r=old.id) == [("EXPIRED",)]
    ledger = await _rows(api, "SELECT kind, d_reserved, version FROM inventory_events ORDER BY version")
    assert ledger == [
        ("RECEIVED", 0, 1),
        ("RESERVED", 3, 2),
        ("RESERVED", 1, 3),
        ("RESERVATION_EXPIRED", -3, 4),
        ("RESERVED", 1, 5),
        ("RESERVED", 2, 6),
    ]
    await _assert_consistent(api, 4)


# --- a batch spans positions (a spread load: group commit) ------------------------------------------


@pytest.mark.parametrize("in_flight", [1, 2, 3])
async def test_concurrent_reserves_over_many_skus_hold_per_sku_what_one_by_one_holds_would(
    api: Api, in_flight: int
) -> None:
    api.ctx.settings.combine_in_flight = in_flight
    skus = [f"SKU-{n}" for n in range(1, 9)]
    await catalogue(api, skus=skus)
    stock_of = {sku: 10 + 3 * n for n, sku in enumerate(skus)}
    for sku, units in stock_of.items():
        await receive(api, sku, "WH-1", units)
    rng = random.Random(8)
    wanted = [(rng.choice(skus), rng.choice([1, 1, 2, 3])) for _ in range(240)]
    # created in list order without awaiting first: arrival order is the list's, per SKU too
    outcomes = await asyncio.gather(*(_outcome_of(api, _request(q, f"k{i}", sku)) for i, (sku, q) in enumerate(wanted)))
    # per SKU, exactly what holds run one at a time in arrival order answer (refusal shortfalls included)
    for sku in skus:
        left = stock_of[sku]
        for (s, q), outcome in zip(wanted, outcomes, strict=True):
            if s != sku:
                continue
            if left >= q:
                assert isinstance(outcome, ReservationView) and outcome.lines[0].quantity == q
                left -= q
            else:
                assert isinstance(outcome, Refused)
                assert outcome.errors[0].message == f"{sku}: {q} requested at WH-1, {left} available"
    assert await integrity.check(api.ctx) == []
    held = {sku: 0 for sku in skus}
    for (s, q), outcome in zip(wanted, outcomes, strict=True):
        if isinstance(outcome, ReservationView):
            held[s] += q
    rows = await _rows(
        api,
        "SELECT s.code, l.reserved, l.on_hand FROM stock_levels l JOIN skus s ON s.id = l.sku_id ORDER BY 1",
    )
    assert {code: reserved for code, reserved, _ in rows} == held
    assert all(reserved <= on_hand for _, reserved, on_hand in rows)
    # each position's RESERVED ledger rows follow arrival order, with versions without gaps
    for sku in skus:
        keys = [
            k
            for (k,) in await _rows(
                api,
                "SELECT r.idempotency_key FROM inventory_events e JOIN reservations r ON r.id = e.reservation_id "
                "JOIN skus s ON s.id = e.sku_id WHERE s.code = :s ORDER BY e.version",
                s=sku,
            )
        ]
        assert keys == [
            f"k{i}"
            for i, ((s, _), o) in enumerate(zip(wanted, outcomes, strict=True))
            if s == sku and isinstance(o, ReservationView)
        ]
    # they were combined across SKUs: transactions (one instant each) that held several SKUs
    spans = [
        n
        for (n,) in await _rows(
            api,
            "SELECT count(DISTINCT l.sku_id) FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id "
            "GROUP BY r.created_at",
        )
    ]
    assert max(spans) > 1 and len(spans) < sum(1 for o in outcomes if isinstance(o, ReservationView)) / 4
    ((count,),) = await _rows(api, "SELECT count(*) FROM reservations")
    assert count == sum(1 for o in outcomes if isinstance(o, ReservationView))


async def test_a_batch_over_positions_leaves_unknown_codes_and_missing_positions_to_the_ordinary_path(
    api: Api,
) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2", "SKU-3"])
    await receive(api, "SKU-1", "WH-1", 5)
    await receive(api, "SKU-3", "WH-1", 5)
    async with _position_locked(api):
        first = asyncio.create_task(_outcome(api, 1, "first"))  # in flight, waiting on the lock
        await asyncio.sleep(0.05)
        tasks = await _queued(
            [
                lambda: _outcome_of(api, _request(2, "a", "SKU-3")),
                lambda: _outcome_of(api, _request(1, "b", "NOPE")),
                lambda: _outcome_of(api, _request(1, "c", "SKU-2")),  # no position yet
                lambda: _outcome_of(api, _request(9, "d", "SKU-1")),
                lambda: _outcome_of(api, _request(4, "e", "SKU-1")),
            ]
        )
    assert isinstance(await first, ReservationView)
    a, b, c, d, e = [await t for t in tasks]
    assert isinstance(a, ReservationView) and isinstance(e, ReservationView)
    assert isinstance(b, Refused) and [x.code for x in b.errors] == [ErrorCode.UNKNOWN_SKU]
    assert isinstance(c, Refused) and c.errors[0].message == "SKU-2: 1 requested at WH-1, 0 available"
    assert isinstance(d, Refused) and d.errors[0].message == "SKU-1: 9 requested at WH-1, 4 available"
    keys = [k for (k,) in await _rows(api, "SELECT idempotency_key FROM reservations ORDER BY 1")]
    assert keys == ["a", "e", "first"]
    # a and e went in one transaction
    assert (
        len({t for (t,) in await _rows(api, "SELECT created_at FROM reservations WHERE idempotency_key IN ('a', 'e')")})
        == 1
    )
    assert await integrity.check(api.ctx) == []


async def test_batches_and_multi_line_checkouts_over_the_same_skus_never_deadlock_or_oversell(api: Api) -> None:
    """Batches lock their positions in primary-key order, as multi-line checkouts do: run together on the
    same SKUs, both finish (no deadlock surfaces), and nothing is held past the stock."""
    skus = ["SKU-1", "SKU-2", "SKU-3"]
    await catalogue(api, skus=skus)
    for sku in skus:
        await receive(api, sku, "WH-1", 40)
    rng = random.Random(3)
    calls: list[Coroutine[Any, Any, ReservationView | Refused]] = []
    for i in range(150):
        if i % 5 == 0:  # a checkout of two lines (the ordinary path), in either order of its lines
            pair = rng.sample(skus, 2)
            request = reservations.ReserveRequest([RequestedLine(s, 1, "WH-1") for s in pair], f"m{i}")
            calls.append(_outcome_of(api, request))
        else:
            calls.append(_outcome_of(api, _request(1, f"k{i}", rng.choice(skus))))
    outcomes = await asyncio.gather(*calls)
    refusals = [o for o in outcomes if isinstance(o, Refused)]
    assert all(e.code == ErrorCode.INSUFFICIENT_STOCK for r in refusals for e in r.errors)
    held_lines = sum(len(o.lines) for o in outcomes if isinstance(o, ReservationView))
    ((reserved,),) = await _rows(api, "SELECT sum(reserved) FROM stock_levels")
    assert reserved == held_lines <= 120
    assert await integrity.check(api.ctx) == []


async def test_a_batch_of_holds_moves_a_dynamic_buffer_as_one_by_one_holds_do(api: Api) -> None:
    """Issue 18's sales velocity: a batch notes each SKU's held units once and, when a channel has a
    dynamic buffer, moves it as the ordinary path does after its hold."""
    from tests.test_dynamic_buffer import MKT, UPSERT, Clock, _figure, _steps

    api.ctx.clock = Clock()
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 100)
    assert (await api.ok(UPSERT, input=[MKT]))["upsertChannels"]["userErrors"] == []
    # the first one finds nothing in flight (ordinary path); the other 59 queue and go in batches
    outcomes = await asyncio.gather(*(_outcome(api, 1, f"k{i}") for i in range(60)))
    assert all(isinstance(o, ReservationView) for o in outcomes)
    # combined: fewer transactions (each row's inserting one, xmin) than holds
    ((transactions,),) = await _rows(api, "SELECT count(DISTINCT xmin::text) FROM reservations")
    assert transactions < 10
    # 60 held at one instant: rate = 60 x ln2 / 3600 s; x 600 s lag = 6.93 -> a buffer of 7
    figure = await _figure(api)
    assert _steps(figure) == [("DYNAMIC_BUFFER", 7, 33)]
    assert figure["available"] == 33
    ((units,),) = await _rows(api, "SELECT units FROM sku_demand WHERE channel_code = ''")
    assert round(units, 6) == 60
