"""Push across server processes, on PostgreSQL and Redis: nothing lost, versions only go up.

* A subscriber on process A follows changes made through process B (and a change committed by a
  process that died before publishing), ending at the true state.
* Redis is killed while changes are committed and started again: every subscriber, on both
  processes and both protocols, ends at the latest state, /readyz says when the listener is down,
  and no server process restarts. This test runs its own redis-server on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from app.db.engine import Database
from app.domain.events import EventType, InventoryEvent
from app.services import events
from app.services.context import Ctx
from app.settings import Settings
from tests.conftest import _truncate, create_test_key
from tests.helpers import COMMIT, RELEASE
from tests.live import Server, servers
from tests.services import REDIS_URL, require_postgres, require_redis
from tests.subscribers import (
    AVAILABILITY_SUB,
    LEGACY_WS,
    LEVELS_SUB,
    TIMEOUT,
    TRANSPORT_WS,
    Http,
    Subscriber,
    by_position,
    by_sku,
    first_messages,
    http_client,
)
from tests.test_redis_backend import private_redis

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SKUS = [f"SKU-{i}" for i in range(4)]
LOCATIONS = ["WH-A", "WH-B"]


def _channel() -> str:
    return f"stockwire.test.{uuid4().hex}"  # the shared Redis may carry other runs' changes


async def _stock(http: Http) -> None:
    await http.catalogue(SKUS, LOCATIONS)
    for sku in SKUS:
        for loc in LOCATIONS:
            await http.event("RECEIVED", sku, loc, 20)


async def _churn(http: Http, rounds: int, seed: int) -> None:
    """Events, reservations, commits and releases on random SKUs, several at a time."""
    rng = random.Random(seed)

    async def one(i: int) -> None:
        sku, loc = rng.choice(SKUS), rng.choice(LOCATIONS)
        match i % 4:
            case 0:
                await http.event(rng.choice(["RECEIVED", "SOLD", "DAMAGED"]), sku, loc, rng.randint(1, 3))
            case 1:
                await http.try_reserve(sku, rng.randint(1, 2))
            case 2:
                rid = await http.try_reserve(sku, 1)
                if rid is not None:
                    data = await http.ok(COMMIT, id=rid, orderRef=f"o-{i}")
                    assert data["commitReservation"]["userErrors"] == []
            case _:
                rid = await http.try_reserve(sku, 1)
                if rid is not None:
                    data = await http.ok(RELEASE, id=rid)
                    assert data["releaseReservation"]["userErrors"] == []

    for start in range(0, rounds, 8):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 8, rounds))))


def _figures(payload: Any) -> Any:
    """A payload without its versions: a change that moved a version but no figure is not sent."""
    if isinstance(payload, dict):
        return {k: _figures(v) for k, v in payload.items() if k != "version"}
    if isinstance(payload, list):
        return [_figures(v) for v in payload]
    return payload


async def _converged(subscriber: Subscriber, truth: dict[str, dict[str, Any]], key: Callable[[Any], str]) -> None:
    """The subscriber's latest message per key shows the true figures, at a version no newer than the truth's."""

    def done(_: list[dict[str, Any]]) -> bool:
        latest = subscriber.latest(key)
        return all(k in latest and _figures(latest[k]) == _figures(want) for k, want in truth.items())

    await subscriber.wait_until(done, f"convergence to {truth}")
    subscriber.assert_versions_increase(key)
    latest = subscriber.latest(key)
    assert all(latest[k]["version"] <= want["version"] for k, want in truth.items())


async def _commit_without_publishing(database_url: str, sku: str, loc: str) -> None:
    """A change committed by a process that dies before its relay runs: only the outbox row is left."""
    db = Database(database_url)
    try:
        ctx = Ctx(db=db, settings=Settings(database_url=database_url))  # no relay listens to this Database
        when = ctx.clock()
        event = InventoryEvent("crashed-writer", uuid4().hex, EventType.RECEIVED, sku, loc, 100, when)
        _, errors = await events.record_events(ctx, [event])
        assert errors == []
    finally:
        await db.dispose()


async def test_a_subscriber_on_one_process_follows_changes_made_through_another(postgres_url: str) -> None:
    require_redis()
    await _truncate(postgres_url)
    key = await create_test_key(postgres_url)
    with servers(2, postgres_url, REDIS_URL, broadcast_channel=_channel()) as (a, b):
        async with http_client(a.url, key) as client_a, http_client(b.url, key) as client_b:
            http_a, http_b = Http(client_a), Http(client_b)
            await _stock(http_b)
            async with (
                Subscriber(a.ws_url, AVAILABILITY_SUB, {"skus": SKUS}, TRANSPORT_WS, key) as avail,
                Subscriber(a.ws_url, LEVELS_SUB, {"skus": SKUS}, LEGACY_WS, key) as levels,
            ):
                await first_messages(avail, len(SKUS))
                await first_messages(levels, len(SKUS) * len(LOCATIONS), "every position")
                await _churn(http_b, 48, seed=1)
                # the truth as A's HTTP API tells it
                await _converged(avail, await http_a.availabilities(SKUS), by_sku)
                await _converged(levels, await http_a.levels(SKUS), by_position)
                assert len(avail.payloads) > len(SKUS) * 4  # it followed the changes, not just the end state

                # committed, then the writer died before publishing: another process's relay sends it
                before = avail.latest(by_sku)[SKUS[0]]["available"]
                await _commit_without_publishing(postgres_url, SKUS[0], LOCATIONS[0])
                await avail.wait_until(
                    lambda _: avail.latest(by_sku)[SKUS[0]]["available"] == before + 100, "the orphaned change"
                )
                await _converged(avail, await http_a.availabilities(SKUS), by_sku)


async def _readiness(server: Server, key: str) -> tuple[int, dict[str, Any]]:
    async with http_client(server.url, key) as client:
        response = await client.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def _wait_ready(ps: list[Server], key: str, status: int) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            answers = [await _readiness(p, key) for p in ps]
            if all(code == status for code, _ in answers):
                return answers[0][1]
            await asyncio.sleep(0.1)


async def test_a_redis_restart_loses_nothing_and_restarts_no_server(postgres_url: str) -> None:
    require_postgres()
    require_redis()
    await _truncate(postgres_url)
    key = await create_test_key(postgres_url)
    async with private_redis() as redis:
        with servers(2, postgres_url, redis.url, broadcast_channel=_channel()) as (a, b):
            pids = [a.process.pid, b.process.pid]
            async with http_client(b.url, key) as client_b:
                http_b = Http(client_b)
                await _stock(http_b)
                subscribers = [
                    Subscriber(a.ws_url, AVAILABILITY_SUB, {"skus": SKUS}, TRANSPORT_WS, key),
                    Subscriber(b.ws_url, AVAILABILITY_SUB, {"skus": SKUS}, LEGACY_WS, key),
                    Subscriber(a.ws_url, LEVELS_SUB, {"skus": SKUS}, LEGACY_WS, key),
                ]
                async with contextlib.AsyncExitStack() as stack:
                    for s in subscribers:
                        await stack.enter_async_context(s)
                        await first_messages(s, len(SKUS))
                    await http_b.event("SOLD", SKUS[0], LOCATIONS[0], 1)
                    await subscribers[0].wait_until(lambda ps: ps[-1]["available"] == 39, "a change before")

                    await redis.kill()
                    # issue 16: push is degraded, queries and reserves are not: the processes stay ready
                    async with asyncio.timeout(TIMEOUT):
                        while [(await _readiness(p, key))[1].get("broadcast") for p in (a, b)] != ["degraded"] * 2:  # noqa: ASYNC110
                            await asyncio.sleep(0.1)
                    down = await _wait_ready([a, b], key, 200)
                    assert down["broadcast"] == "degraded", down
                    await _churn(http_b, 24, seed=2)  # committed while nothing can be published
                    await http_b.event("RECEIVED", SKUS[1], LOCATIONS[1], 5)

                    await redis.start()  # the same port: the servers were never told anything
                    await _wait_ready([a, b], key, 200)
                    truth = await http_b.availabilities(SKUS)
                    await _converged(subscribers[0], truth, by_sku)
                    await _converged(subscribers[1], truth, by_sku)
                    await _converged(subscribers[2], await http_b.levels(SKUS), by_position)

                    # and the pipeline works as before
                    await http_b.event("RECEIVED", SKUS[2], LOCATIONS[0], 3)
                    truth = await http_b.availabilities(SKUS)
                    for s in subscribers[:2]:
                        await _converged(s, truth, by_sku)
            assert [p.process.pid for p in (a, b)] == pids
            assert all(p.process.poll() is None for p in (a, b)), "a server process exited"
