"""The outbox relay, in process on PostgreSQL: what each cause publishes, and what it must not.

A recorder listens on the broadcast channel itself (below the Hub's latest-per-key mailboxes, which
would hide a repeated publication), so every test sees exactly what went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from app.db.engine import Database
from app.db.tables import outbox, skus
from app.db.tenancy import DEFAULT_TENANT
from app.main import Runtime, create_app
from app.realtime import codec
from app.realtime.hub import Change, decode_message
from app.realtime.relay import OutboxRelay
from app.services.context import Ctx, utc_now
from app.settings import Settings
from tests.conftest import Api, create_test_key
from tests.helpers import COMMIT, RELEASE, UPSERT_LOCATIONS, UPSERT_SKUS, catalogue, event, record, reserve

TIMEOUT = 10.0
SKU, WH1, WH2 = "SKU-1", "WH-1", "WH-2"
_markers = itertools.count(1)


class Recorder:
    """Every change published on the runtime's channel, decoded, in order."""

    def __init__(self, runtime: Runtime) -> None:
        assert runtime.broadcast is not None and runtime.hub is not None
        self.runtime = runtime
        self.changes: list[Change] = []
        self.messages = 0
        self._marker: int | None = None
        self._seen_marker = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        hub = self.runtime.hub
        assert hub is not None
        # the hub knows of this listener: with memory:// and no mailbox it would not publish (Hub.unheard)
        subscriber = await self._stack.enter_async_context(hub.listening())

        async def listen() -> None:
            while True:
                message = (await subscriber.get()).message
                changes = decode_message(message)
                if changes and changes[0].kind == "_marker":
                    if changes[0].version == self._marker:
                        self._seen_marker.set()
                    continue
                self.messages += 1
                self.changes += changes

        self._task = asyncio.create_task(listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        await self._stack.aclose()

    async def settle(self) -> list[Change]:
        """Wait until the outbox is empty and all it led to was recorded; returns (and forgets) that."""
        runtime = self.runtime
        assert runtime.ctx is not None and runtime.hub is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                async with runtime.ctx.db.read() as conn:
                    if not (await conn.execute(select(outbox.c.id).limit(1))).first():
                        break
                await asyncio.sleep(0.01)
            # the memory broadcast is one FIFO: once our marker is back, everything before it is too
            self._marker = next(_markers)
            self._seen_marker.clear()
            await runtime.hub.publish("_marker", "m", self._marker, {})
            await self._seen_marker.wait()
        out, self.changes = self.changes, []
        return out


@dataclass
class Rig:
    api: Api
    runtime: Runtime
    recorder: Recorder

    async def settle(self) -> dict[tuple[str, str], list[Change]]:
        by_key: dict[tuple[str, str], list[Change]] = {}
        for change in await self.recorder.settle():
            by_key.setdefault((change.kind, change.key), []).append(change)
        return by_key


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    async with _rig(Settings(database_url=database_url, broadcast_url="memory://")) as made:
        yield made


@pytest.fixture
async def rig_without_polling(database_url: str) -> AsyncIterator[Rig]:
    """A relay that drains only when a commit asks for it (no periodic poll racing with the test)."""
    async with _rig(Settings(database_url=database_url, broadcast_url="memory://", relay_poll_seconds=600)) as made:
        yield made


@contextlib.asynccontextmanager
async def _rig(settings: Settings) -> AsyncIterator[Rig]:
    database_url = settings.database_url
    key = await create_test_key(database_url)  # before the lifespan: Postgres refuses to start without one
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        assert runtime.ctx is not None
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            Recorder(runtime) as recorder,
        ):
            yield Rig(Api(client, runtime.ctx, key), runtime, recorder)


def _level_key(sku: str, loc: str) -> tuple[str, str]:
    return codec.stock_level_kind(DEFAULT_TENANT), codec.stock_level_key(sku, loc)


# every message names its tenant in its kind (app/realtime/codec.py); these tests run in the default one
AVAILABILITY = codec.availability_kind(None, DEFAULT_TENANT)
AVAIL = (AVAILABILITY, SKU)


def _only(published: dict[tuple[str, str], list[Change]], key: tuple[str, str]) -> dict[str, Any]:
    assert len(published.get(key, [])) == 1, f"{key}: {published.get(key)}"
    return published[key][0].data


async def test_every_cause_publishes_exactly_once(rig: Rig) -> None:
    api = rig.api
    await catalogue(api, [SKU], [(WH1, 10), (WH2, 20)])
    await record(api, event("RECEIVED", SKU, WH1, 10), event("RECEIVED", SKU, WH2, 5))
    published = await rig.settle()
    assert _only(published, AVAIL)["available"] == 15  # one message for both events of one batch
    assert _only(published, _level_key(SKU, WH1))["on_hand"] == 10
    assert _only(published, _level_key(SKU, WH2))["on_hand"] == 5

    async def step(what: str, available: int, *positions: str) -> dict[tuple[str, str], list[Change]]:
        published = await rig.settle()
        assert _only(published, AVAIL)["available"] == available, what
        for loc in positions:
            _only(published, _level_key(SKU, loc))
        assert set(published) == {AVAIL, *(_level_key(SKU, loc) for loc in positions)}, what
        return published

    await record(api, event("SOLD", SKU, WH1, 1))
    await step("an event", 14, WH1)

    held = await reserve(api, [{"skuCode": SKU, "quantity": 2, "locationCode": WH1}])
    await step("a reservation", 12, WH1)

    data = await api.ok(COMMIT, id=held["reservation"]["id"], orderRef="o-1")
    assert data["commitReservation"]["userErrors"] == []
    published = await step("a commit", 12, WH1)
    assert _only(published, _level_key(SKU, WH1))["committed"] == 2

    held = await reserve(api, [{"skuCode": SKU, "quantity": 3, "locationCode": WH2}])
    await step("another reservation", 9, WH2)
    data = await api.ok(RELEASE, id=held["reservation"]["id"])
    assert data["releaseReservation"]["userErrors"] == []
    await step("a release", 12, WH2)

    held = await reserve(api, [{"skuCode": SKU, "quantity": 4, "locationCode": WH2}], ttlSeconds=60)
    await step("a reservation to expire", 8, WH2)
    ctx = rig.runtime.ctx
    assert ctx is not None
    ctx.clock = lambda: utc_now() + timedelta(minutes=2)  # the sweeper runs on this clock too
    async with asyncio.timeout(TIMEOUT):
        while True:
            rows = await api.sql("SELECT status FROM reservations WHERE id = :id", id=held["reservation"]["id"])
            if rows[0][0] == "EXPIRED":
                break
            await asyncio.sleep(0.05)
    await step("an expiry, by the sweeper", 12, WH2)

    # switching a location off changes the figure without changing any position: availability only
    await api.ok(UPSERT_LOCATIONS, input=[{"code": WH2, "name": WH2, "kind": "WAREHOUSE", "active": False}])
    await step("a location switched off", 7)
    await api.ok(UPSERT_SKUS, input=[{"code": SKU, "name": SKU, "active": False}])
    await step("the SKU switched off", 0)


async def test_changes_nobody_can_see_publish_nothing(rig: Rig) -> None:
    api = rig.api
    await catalogue(api, [SKU], [(WH1, 10)])
    first = event("RECEIVED", SKU, WH1, 7)
    await record(api, first)
    assert _only(await rig.settle(), AVAIL)["available"] == 7

    await api.ok(UPSERT_LOCATIONS, input=[{"code": WH1, "name": "renamed", "kind": "WAREHOUSE", "priority": 5}])
    await api.ok(UPSERT_SKUS, input=[{"code": SKU, "name": "renamed too"}])
    await record(api, first)  # the same event again: DUPLICATE
    await record(api, event("COUNTED", SKU, WH1, 7, minutes=5))  # a count that confirms what is there
    assert await rig.settle() == {}

    # even rows that reach the outbox for positions that did not move publish nothing
    async with rig.runtime.ctx.db.begin() as conn:  # type: ignore[union-attr]
        sku_id = (await conn.execute(select(skus.c.id).where(skus.c.code == SKU))).scalar_one()
        await conn.execute(insert(outbox), [{"sku_id": sku_id, "location_id": None, "created_at": utc_now()}])
    assert rig.runtime.relay is not None
    rig.runtime.relay.poke()
    assert await rig.settle() == {}
    assert rig.runtime.relay.skipped_count > 0

    await record(api, event("RECEIVED", SKU, WH1, 1, minutes=10))  # after the count, so not superseded
    assert _only(await rig.settle(), AVAIL)["available"] == 8


async def test_one_transaction_goes_out_as_one_message(rig: Rig) -> None:
    codes = [f"SKU-{i:03}" for i in range(60)]
    await catalogue(rig.api, codes, [(WH1, 10)])
    await rig.settle()
    messages_before = rig.recorder.messages
    result = await record(rig.api, *(event("RECEIVED", c, WH1, 1) for c in codes))
    assert result["userErrors"] == []
    published = await rig.settle()
    assert len(published) == 120  # an availability and a stock level per SKU
    assert rig.recorder.messages - messages_before == 1  # serialised and sent once for every process


@pytest.mark.postgres
async def test_two_relays_share_the_outbox_and_publish_each_row_once(rig: Rig) -> None:
    runtime = rig.runtime
    assert runtime.ctx is not None
    codes = [f"SKU-{i:03}" for i in range(40)]
    await catalogue(rig.api, codes, [(WH1, 10)])
    await rig.settle()
    # rows committed by a process that then died before publishing: no poke, nobody local to relay them
    async with runtime.ctx.db.begin() as conn:
        ids = [r.id for r in await conn.execute(select(skus.c.id).where(skus.c.code.in_(codes)))]
        await conn.execute(insert(outbox), [{"sku_id": i, "location_id": None, "created_at": utc_now()} for i in ids])

    class Capture:
        unheard = False  # a listener is assumed: these relays publish

        def audience(self) -> None:
            return None  # anyone may hear: every message is built

        def __init__(self) -> None:
            self.keys: list[tuple[str, str]] = []

        def observe(self, observer: Any) -> None:
            """Nothing comes back: these relays only publish."""

        async def publish_many(self, changes: list[Change]) -> None:
            await asyncio.sleep(0.01)  # hold the claim a moment, so the other relay must skip it
            self.keys += [(c.kind, c.key) for c in changes]

    url = runtime.ctx.db.url
    dbs = [Database(url), Database(url)]
    captures = [Capture(), Capture()]
    relays = [
        OutboxRelay(Ctx(db=db, settings=Settings(database_url=url)), cap, batch_size=3)  # type: ignore[arg-type]
        for db, cap in zip(dbs, captures, strict=True)
    ]
    runtime_relay_task = runtime.tasks[0]
    runtime_relay_task.cancel()  # only the two relays under test may take rows now
    await asyncio.wait([runtime_relay_task])

    async def drain(relay: OutboxRelay) -> None:
        while await relay.drain_once():
            pass

    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(drain(r) for r in relays))
    finally:
        for db in dbs:
            await db.dispose()
    published = captures[0].keys + captures[1].keys
    assert sorted(published) == sorted((AVAILABILITY, c) for c in codes)  # each once, none lost
    assert captures[0].keys and captures[1].keys  # and both relays did part of the work


def _availability(version: int, available: int) -> Change:
    data = {"sku": SKU, "channel": None, "available": available, "oversold": 0, "version": version, "locations": []}
    return Change(AVAILABILITY, SKU, version, data)


async def test_a_skipped_state_overtaken_by_another_relays_older_message_goes_out_again() -> None:
    """Relay A published 20 units at v1, relay B 17 at v2, and A skipped v3 (20 again: "no news" to A)
    before B's message reached it. Subscribers would stay at 17: A must publish v3 after all."""
    from broadcaster import Broadcast

    from app.realtime.hub import Hub
    from app.realtime.redis_backend import InMemoryBackend

    broadcast = Broadcast(backend=InMemoryBackend("memory://"))
    await broadcast.connect()
    hub = Hub(broadcast, channel="relay-aba")
    await hub.start()
    try:
        ctx = Ctx(db=Database("postgresql+asyncpg://never-connected/none"), settings=Settings())
        relay_a = OutboxRelay(ctx, hub)
        subscriber = hub.subscribe(AVAILABILITY, {SKU})
        v1 = _availability(1, 20)
        relay_a._store((v1.kind, v1.key), v1, relay_a._content(v1))  # A published v1
        assert relay_a._news(_availability(3, 20)) is None  # same figures as A's last: skipped
        await hub.publish_many([_availability(2, 17)])  # B's v2 arrives (through the hub) only now
        got = [await asyncio.wait_for(subscriber.get(), TIMEOUT)]
        assert got[0][1:] == (2, _availability(2, 17).data)
        assert list(relay_a._republish) == [(AVAILABILITY, SKU)]
        await relay_a._publish_overtaken()
        got.append(await asyncio.wait_for(subscriber.get(), TIMEOUT))
        assert (got[1][1], got[1][2]["available"]) == (3, 20)  # subscribers end at the true figures
        assert relay_a.republished_count == 1 and not relay_a._republish

        # an older message with the same figures as the skipped state changes nothing
        relay_a.observe([_availability(1, 20)])
        assert not relay_a._republish
        await ctx.db.dispose()
    finally:
        await hub.stop()
        await broadcast.disconnect()


async def test_a_commit_is_published_from_its_hint_which_claims_its_outbox_row(rig_without_polling: Rig) -> None:
    """The hint's read claims the commit's outbox row in the same statement (and deletes it once the
    publication went out): no drain follows to read the same state again."""
    rig = rig_without_polling
    relay = rig.runtime.relay
    assert relay is not None
    api = rig.api
    await catalogue(api, [SKU], [(WH1, 10)])
    await rig.settle()
    await asyncio.sleep(0.2)  # past any drain the set-up's commits scheduled
    claims = _watch_drains(relay)
    published_before = relay.published_count
    await record(api, event("RECEIVED", SKU, WH1, 3))
    published = await rig.settle()
    assert _only(published, AVAIL)["available"] == 3
    assert relay.published_count == published_before + 2  # the availability and the level
    assert await api.sql("SELECT id FROM outbox") == []
    await asyncio.sleep(0.2)  # past when a drain after the hint would have run
    assert claims == []


def _watch_drains(relay: Any) -> list[int]:
    """What each of the relay's drains claims from now on, in order."""
    claims: list[int] = []
    drain = relay.drain_once

    async def watched_drain() -> int:
        claimed = await drain()
        claims.append(claimed)
        return claimed

    relay.drain_once = watched_drain
    return claims


async def test_a_failed_publication_from_a_hint_keeps_the_outbox_row(rig_without_polling: Rig) -> None:
    """The hint's claim commits only after its publication: when that fails (Redis down) the row is
    still there, and the drain that follows the failure publishes it."""
    rig = rig_without_polling
    relay = rig.runtime.relay
    assert relay is not None
    api = rig.api
    await catalogue(api, [SKU], [(WH1, 10)])
    await rig.settle()
    await asyncio.sleep(0.2)
    publish_many = relay.hub.publish_many
    failures: list[list[Any]] = []

    async def failing_once(changes: list[Change]) -> None:
        if not failures:
            # a reader outside the claim's transaction still sees the row (the delete is not committed)
            failures.append(await api.sql("SELECT sku_id FROM outbox"))
            raise ConnectionError("redis down")
        await publish_many(changes)

    relay.hub.publish_many = failing_once  # type: ignore[method-assign]
    claims = _watch_drains(relay)
    await record(api, event("RECEIVED", SKU, WH1, 3))
    published = await rig.settle()
    assert len(failures) == 1 and len(failures[0]) == 1
    assert _only(published, AVAIL)["available"] == 3  # went out after all
    assert claims and claims[0] == 1  # by the drain the failure asked for, from the row it left
    assert await api.sql("SELECT id FROM outbox") == []


async def test_commits_that_queue_nothing_do_not_wake_the_relay(rig_without_polling: Rig) -> None:
    rig = rig_without_polling
    relay = rig.runtime.relay
    assert relay is not None
    await catalogue(rig.api, [SKU], [(WH1, 10)])
    await record(rig.api, event("RECEIVED", SKU, WH1, 5))
    await rig.settle()
    await asyncio.sleep(0.2)  # past the drain the receipt scheduled
    drains = 0
    drain = relay.drain_once

    async def counted() -> int:
        nonlocal drains
        drains += 1
        return await drain()

    relay.drain_once = counted  # type: ignore[method-assign]
    await asyncio.sleep(1.0)  # the expiry sweeper commits every 0.25 s, with nothing to expire
    assert drains == 0
    await rig.api.ok(UPSERT_SKUS, input=[{"code": SKU, "name": SKU, "active": False}])  # bulk outbox rows
    assert _only(await rig.settle(), AVAIL)["available"] == 0
    assert drains >= 1  # claimed at once, not at a poll (none comes in this test)
