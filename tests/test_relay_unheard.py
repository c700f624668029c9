"""The relay of a process alone on its channel (memory://) with nobody subscribed claims the outbox rows
without reading or publishing them (Hub.unheard, OutboxRelay._nobody_heard), and never at the cost of a
subscriber: one that opens during such a claim is published to, and one that comes after a silence gets a
state even when it equals one published before the silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import insert, select

from app.db import pg
from app.db.tables import outbox, skus
from app.db.tenancy import DEFAULT_TENANT
from app.main import Runtime
from app.realtime import codec
from app.realtime.hub import Hub, Mailbox
from app.realtime.relay import OutboxRelay
from app.services.context import utc_now
from tests.conftest import Api, served
from tests.helpers import catalogue, event, record

pytestmark = pytest.mark.postgres

SKU, WH1 = "SKU-1", "WH-1"
AVAILABILITY = codec.availability_kind(None, DEFAULT_TENANT)
TIMEOUT = 10.0


@dataclass
class Alone:
    api: Api
    runtime: Runtime

    @property
    def hub(self) -> Hub:
        assert self.runtime.hub is not None
        return self.runtime.hub

    @property
    def relay(self) -> OutboxRelay:
        assert self.runtime.relay is not None
        return self.runtime.relay

    async def outbox_empty(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            while True:
                if not await self.api.sql("SELECT id FROM outbox"):
                    return
                await asyncio.sleep(0.01)


@pytest.fixture
async def alone(database_url: str) -> AsyncIterator[Alone]:
    """One process on memory:// whose relay drains only when a commit asks (no poll racing the test)."""
    async with served(database_url, relay_poll_seconds=600) as (api, runtime):
        made = Alone(api, runtime)
        await catalogue(made.api, [SKU], [(WH1, 10)])
        await made.outbox_empty()
        yield made


async def _next(mailbox: Mailbox) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        _, _, data = await mailbox.get()
    return dict(data)


async def test_with_nobody_subscribed_the_relay_claims_rows_unread(alone: Alone) -> None:
    assert alone.hub.unheard
    published, unheard = alone.relay.published_count, alone.relay.unheard_count
    result = await record(alone.api, event("RECEIVED", SKU, WH1, 3))
    assert result["userErrors"] == []
    await alone.outbox_empty()
    assert alone.relay.published_count == published
    assert alone.relay.unheard_count == unheard + 1  # the one position, claimed from its commit's hint
    metrics = (await alone.api.client.get("/metrics")).text
    assert f"stockwire_relay_unheard_claims {float(unheard + 1)}" in metrics.splitlines()

    # rows a process left when it died (no hint): the drain claims them unread as well
    async with alone.runtime.ctx.db.begin() as conn:  # type: ignore[union-attr]
        sku_id = (await conn.execute(select(skus.c.id).where(skus.c.code == SKU))).scalar_one()
        await conn.execute(insert(outbox), [{"sku_id": sku_id, "location_id": None, "created_at": utc_now()}] * 2)
    alone.relay.poke()
    await alone.outbox_empty()
    assert alone.relay.published_count == published
    assert alone.relay.unheard_count == unheard + 3


async def test_a_subscriber_after_a_silence_gets_a_state_equal_to_one_sent_before_it(alone: Alone) -> None:
    first = alone.hub.subscribe(AVAILABILITY, {SKU})
    await record(alone.api, event("RECEIVED", SKU, WH1, 5))
    assert (await _next(first))["available"] == 5
    alone.hub.unsubscribe(first)

    await record(alone.api, event("RECEIVED", SKU, WH1, 2))  # 7, told to nobody
    await alone.outbox_empty()
    assert alone.hub.unheard

    # a new subscriber starts from a snapshot (7); the next state (5 again) equals the last one the relay
    # published, which it would skip as "nothing a subscriber sees moved" had it not forgotten it
    second = alone.hub.subscribe(AVAILABILITY, {SKU})
    await record(alone.api, event("SOLD", SKU, WH1, 2))
    assert (await _next(second))["available"] == 5


async def test_a_subscription_that_opens_during_an_unheard_claim_is_published_to(
    alone: Alone, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_and_read = pg.claim_and_read
    opened: list[Mailbox] = []

    async def subscribing_meanwhile(db: Any, sku_ids: Any, pairs: Any) -> Any:
        found = await claim_and_read(db, sku_ids, pairs)
        if not sku_ids and not opened:  # the unread claim: a storefront subscribes while it runs
            opened.append(alone.hub.subscribe(AVAILABILITY, {SKU}))
        return found

    monkeypatch.setattr(pg, "claim_and_read", subscribing_meanwhile)
    unheard = alone.relay.unheard_count
    await record(alone.api, event("RECEIVED", SKU, WH1, 4))
    await alone.outbox_empty()
    assert opened  # the claim ran unread (the hub was unheard when it started) ...
    assert (await _next(opened[0]))["available"] == 4  # ... and rolled back: published after all
    assert alone.relay.unheard_count == unheard


LEVEL = codec.stock_level_kind(DEFAULT_TENANT)


async def test_with_subscribers_open_only_the_messages_somebody_hears_are_built(alone: Alone) -> None:
    await catalogue(alone.api, ["SKU-1", "SKU-2"], [(WH1, 10), ("WH-2", 20)])
    await alone.outbox_empty()
    watching_one = alone.hub.subscribe(AVAILABILITY, {"SKU-1"})
    watching_level = alone.hub.subscribe(LEVEL, {codec.stock_level_key("SKU-2", "WH-2")})
    assert not alone.hub.unheard
    published, unheard = alone.relay.published_count, alone.relay.unheard_messages
    result = await record(
        alone.api,
        event("RECEIVED", "SKU-1", WH1, 3),
        event("RECEIVED", "SKU-2", WH1, 4),
        event("RECEIVED", "SKU-2", "WH-2", 6),
    )
    assert result["userErrors"] == []
    await alone.outbox_empty()
    assert (await _next(watching_one))["available"] == 3
    level = await _next(watching_level)
    assert (level["sku"], level["loc"], level["on_hand"]) == ("SKU-2", "WH-2", 6)
    # built and published: SKU-1's availability, SKU-2 at WH-2; not built: SKU-2's availability and the
    # levels of SKU-1 and SKU-2 at WH-1
    assert alone.relay.published_count - published == 2
    assert alone.relay.unheard_messages - unheard == 3
    metrics = (await alone.api.client.get("/metrics")).text
    assert f"stockwire_relay_unheard_messages {float(alone.relay.unheard_messages)}" in metrics.splitlines()

    # a subscriber of every SKU's availability hears SKU-2's too
    everything = alone.hub.subscribe(AVAILABILITY, None)
    published, unheard = alone.relay.published_count, alone.relay.unheard_messages
    await record(alone.api, event("SOLD", "SKU-2", WH1, 1))
    await alone.outbox_empty()
    assert (await _next(everything))["available"] == 9  # 4 - 1 at WH-1, 6 at WH-2
    assert alone.relay.published_count - published == 1
    assert alone.relay.unheard_messages - unheard == 1  # SKU-2's level at WH-1


async def test_a_key_nobody_heard_for_a_while_gets_a_state_equal_to_one_sent_before(alone: Alone) -> None:
    await catalogue(alone.api, ["SKU-1", "SKU-2"], [(WH1, 10)])
    other = alone.hub.subscribe(AVAILABILITY, {"SKU-2"})  # open throughout: the hub is never unheard
    first = alone.hub.subscribe(AVAILABILITY, {SKU})
    await record(alone.api, event("RECEIVED", SKU, WH1, 5))
    assert (await _next(first))["available"] == 5
    alone.hub.unsubscribe(first)

    unheard = alone.relay.unheard_messages
    await record(alone.api, event("RECEIVED", SKU, WH1, 2))  # 7, heard by nobody
    await alone.outbox_empty()
    assert not alone.hub.unheard
    assert alone.relay.unheard_messages == unheard + 2  # SKU-1's availability and its level

    # a new subscriber starts from a snapshot (7); the next state (5 again) equals the last one the relay
    # published for SKU-1, which it would skip as "nothing a subscriber sees moved" had it not forgotten it
    second = alone.hub.subscribe(AVAILABILITY, {SKU})
    await record(alone.api, event("SOLD", SKU, WH1, 2))
    assert (await _next(second))["available"] == 5
    assert other.keys == frozenset({"SKU-2"})
