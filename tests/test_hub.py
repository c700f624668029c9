"""The hub's fan-out and mailbox semantics (in-memory backend), plus one run across Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from broadcaster import Broadcast

from app.realtime.hub import Hub, Mailbox, MailboxClosed, ResyncNeeded, decode_message
from app.realtime.redis_backend import InMemoryBackend, ReconnectCallback, ReconnectingRedisBackend
from tests.services import REDIS_URL, require_redis

TIMEOUT = 5.0
KIND = "availability"


@pytest.fixture
async def broadcast() -> AsyncIterator[Broadcast]:
    async with Broadcast(backend=InMemoryBackend("memory://")) as broadcast:
        yield broadcast


@pytest.fixture
async def hub(broadcast: Broadcast) -> AsyncIterator[Hub]:
    hub = Hub(broadcast)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def _get(mailbox: Mailbox) -> tuple[str, int, dict[str, object]]:
    return await asyncio.wait_for(mailbox.get(), TIMEOUT)


async def _settle(hub: Hub) -> None:
    """Wait until the hub has dispatched everything published before this call.

    The memory backend is one FIFO queue, so once a marker published now comes out of a mailbox,
    every earlier message has been dispatched too.
    """
    marker = hub.subscribe("_marker", {"done"})
    try:
        await hub.publish("_marker", "done", 1, {})
        await _get(marker)
    finally:
        hub.unsubscribe(marker)


async def test_slow_reader_gets_only_the_latest_version_per_key(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    for version in range(1, 1001):
        await hub.publish(KIND, "SKU-1", version, {"available": version})
    await _settle(hub)
    assert len(mailbox) == 1
    assert await _get(mailbox) == ("SKU-1", 1000, {"available": 1000})
    assert len(mailbox) == 0


async def test_pending_keys_come_out_in_order_of_first_arrival(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, None)
    await hub.publish(KIND, "A", 1, {"n": 1})
    await hub.publish(KIND, "B", 1, {"n": 1})
    await hub.publish(KIND, "A", 2, {"n": 2})  # replaces A's entry but keeps A's place
    await _settle(hub)
    assert [await _get(mailbox) for _ in range(2)] == [("A", 2, {"n": 2}), ("B", 1, {"n": 1})]


async def test_out_of_order_and_duplicate_versions_are_dropped(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    for version in (5, 3, 5):  # 3 is older than what is pending, the second 5 a duplicate
        await hub.publish(KIND, "SKU-1", version, {"v": version})
    await _settle(hub)
    assert await _get(mailbox) == ("SKU-1", 5, {"v": 5})

    for version in (4, 5, 6):  # 4 and 5 are not newer than what was already delivered
        await hub.publish(KIND, "SKU-1", version, {"v": version})
    await _settle(hub)
    assert len(mailbox) == 1
    assert await _get(mailbox) == ("SKU-1", 6, {"v": 6})


async def test_mark_delivered_seeds_the_version_and_prunes_older_pending(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1", "SKU-2"})
    await hub.publish(KIND, "SKU-2", 3, {"v": 3})
    await _settle(hub)
    # As after sending a snapshot read at these versions:
    mailbox.mark_delivered("SKU-1", 10)
    mailbox.mark_delivered("SKU-2", 3)
    assert len(mailbox) == 0

    await hub.publish(KIND, "SKU-1", 9, {"v": 9})
    await hub.publish(KIND, "SKU-1", 11, {"v": 11})
    await _settle(hub)
    assert await _get(mailbox) == ("SKU-1", 11, {"v": 11})
    assert len(mailbox) == 0


async def test_only_subscribed_keys_of_the_subscribed_kind_arrive(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    await hub.publish(KIND, "SKU-2", 1, {})
    await hub.publish("stock_level", "SKU-1", 1, {})
    await hub.publish(KIND, "SKU-1", 1, {"mine": True})
    await _settle(hub)
    assert len(mailbox) == 1
    assert await _get(mailbox) == ("SKU-1", 1, {"mine": True})


async def test_wildcard_and_match_subscriptions(hub: Hub) -> None:
    everything = hub.subscribe("stock_level", None)
    east = hub.subscribe("stock_level", match=lambda key: key.endswith("|WH-EAST"))
    for key in ("SKU-1|WH-EAST", "SKU-1|WH-WEST", "SKU-2|WH-EAST"):
        await hub.publish("stock_level", key, 1, {"key": key})
    await hub.publish(KIND, "SKU-1", 1, {})  # another kind: neither sees it
    await _settle(hub)
    assert [(await _get(everything))[0] for _ in range(len(everything))] == [
        "SKU-1|WH-EAST",
        "SKU-1|WH-WEST",
        "SKU-2|WH-EAST",
    ]
    assert [(await _get(east))[0] for _ in range(len(east))] == ["SKU-1|WH-EAST", "SKU-2|WH-EAST"]


def test_keys_and_match_together_are_refused(broadcast: Broadcast) -> None:
    with pytest.raises(ValueError, match="not both"):
        Hub(broadcast).subscribe(KIND, {"SKU-1"}, match=lambda key: True)


async def test_a_message_reaches_only_interested_mailboxes(hub: Hub) -> None:
    watchers = [hub.subscribe(KIND, {f"SKU-{n}"}) for n in range(100)]
    assert hub.dispatch('{"kind":"availability","key":"SKU-7","version":1,"data":{}}') == 1
    assert [len(m) for m in watchers] == [1 if n == 7 else 0 for n in range(100)]


async def test_unsubscribe_closes_the_mailbox_and_stops_delivery(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    wildcard = hub.subscribe(KIND, None)
    waiting = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    hub.unsubscribe(mailbox)
    hub.unsubscribe(wildcard)
    with pytest.raises(MailboxClosed):
        await asyncio.wait_for(waiting, TIMEOUT)  # a waiting reader is released, not left hanging
    assert [item async for item in mailbox] == []  # and `async for` just ends
    assert hub.dispatch('{"kind":"availability","key":"SKU-1","version":1,"data":{}}') == 0
    assert mailbox.closed and len(mailbox) == 0


async def test_stop_closes_every_mailbox(broadcast: Broadcast) -> None:
    hub = Hub(broadcast)
    await hub.start()
    mailbox = hub.subscribe(KIND, None)
    assert hub.alive
    await hub.stop()
    assert not hub.alive
    with pytest.raises(MailboxClosed):
        await _get(mailbox)


async def test_malformed_messages_are_logged_and_skipped(
    hub: Hub, broadcast: Broadcast, caplog: pytest.LogCaptureFixture
) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    bad = [
        "not json",
        "[1, 2]",
        '{"kind": "availability", "key": "SKU-1", "version": "7", "data": {}}',
        '{"kind": "availability", "key": "SKU-1", "version": true, "data": {}}',
        '{"kind": "availability", "key": "SKU-1", "version": 7, "data": [1]}',
        '{"kind": "availability", "version": 7, "data": {}}',
        "[" * 100_000,  # deep nesting: RecursionError inside json
    ]
    with caplog.at_level(logging.WARNING, logger="stockwire.realtime"):
        for message in bad:
            await broadcast.publish(hub.channel, message)
        await hub.publish(KIND, "SKU-1", 7, {"ok": True})
        assert await _get(mailbox) == ("SKU-1", 7, {"ok": True})
    assert hub.alive
    assert sum("malformed" in r.getMessage() for r in caplog.records) == len(bad)


async def test_a_failing_match_predicate_does_not_affect_other_mailboxes(hub: Hub) -> None:
    def broken(key: str) -> bool:
        raise RuntimeError("subscriber bug")

    hub.subscribe(KIND, match=broken)
    healthy = hub.subscribe(KIND, None)
    await hub.publish(KIND, "SKU-1", 1, {})
    assert await _get(healthy) == ("SKU-1", 1, {})
    assert hub.alive


async def test_resync_is_raised_once_then_messages_flow_again(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    waiting = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    hub.request_resync()
    with pytest.raises(ResyncNeeded):
        await asyncio.wait_for(waiting, TIMEOUT)  # wakes a reader that was waiting
    assert not mailbox.resync_requested
    await hub.publish(KIND, "SKU-1", 2, {"v": 2})
    assert await _get(mailbox) == ("SKU-1", 2, {"v": 2})


async def test_consumer_loop_from_the_module_docstring(hub: Hub) -> None:
    mailbox = hub.subscribe(KIND, {"SKU-1"})
    sent: list[tuple[str, int]] = []
    truth = {"SKU-1": 5}  # what a re-read of the database would return

    async def consume() -> None:
        while True:
            try:
                async for key, version, _data in mailbox:
                    sent.append((key, version))
            except ResyncNeeded:
                for key, version in truth.items():
                    sent.append((key, version))
                    mailbox.mark_delivered(key, version)
                continue
            break

    consumer = asyncio.create_task(consume())
    await hub.publish(KIND, "SKU-1", 1, {})
    await _settle(hub)
    hub.request_resync()
    await hub.publish(KIND, "SKU-1", 4, {})  # older than the snapshot: must not be sent after it
    await hub.publish(KIND, "SKU-1", 6, {})
    await _settle(hub)
    hub.unsubscribe(mailbox)
    await asyncio.wait_for(consumer, TIMEOUT)
    assert sent == [("SKU-1", 1), ("SKU-1", 5), ("SKU-1", 6)]


class RecordingMemoryBackend(InMemoryBackend):
    """The memory backend, but keeping the callbacks so a test can play a reconnect."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.callbacks: list[ReconnectCallback] = []

    def add_reconnect_callback(self, callback: ReconnectCallback) -> None:
        self.callbacks.append(callback)

    def remove_reconnect_callback(self, callback: ReconnectCallback) -> None:
        self.callbacks.remove(callback)


async def test_backend_reconnect_asks_every_mailbox_to_resync() -> None:
    backend = RecordingMemoryBackend("memory://")
    async with Broadcast(backend=backend) as broadcast:
        hub = Hub(broadcast, backend=backend)
        await hub.start()
        try:
            keyed, wildcard = hub.subscribe(KIND, {"SKU-1"}), hub.subscribe("stock_level", None)
            assert len(backend.callbacks) == 1
            for callback in backend.callbacks:
                callback()
            for mailbox in (keyed, wildcard):
                assert mailbox.resync_requested
                with pytest.raises(ResyncNeeded):
                    await _get(mailbox)
        finally:
            await hub.stop()
        assert backend.callbacks == []  # stop() unhooks the hub


@pytest.mark.redis
async def test_two_processes_share_changes_through_redis() -> None:
    require_redis()
    channel = f"stockwire.test.{uuid4().hex}"
    # Two Broadcast objects with their own connections stand for two processes.
    backend_a, backend_b = ReconnectingRedisBackend(REDIS_URL), ReconnectingRedisBackend(REDIS_URL)
    sender, receiver = Broadcast(backend=backend_a), Broadcast(backend=backend_b)
    async with sender, receiver:
        hub_a, hub_b = Hub(sender, channel, backend_a), Hub(receiver, channel, backend_b)
        await hub_a.start()
        await hub_b.start()
        try:
            remote = hub_b.subscribe(KIND, {"SKU-1"})
            local = hub_a.subscribe(KIND, {"SKU-1"})
            await hub_a.publish(KIND, "SKU-1", 3, {"available": 12, "channel": "web"})
            expected = ("SKU-1", 3, {"available": 12, "channel": "web"})
            assert await _get(remote) == expected
            assert await _get(local) == expected  # the publisher's own subscribers hear it the same way
            assert hub_a.alive and hub_b.alive
        finally:
            await hub_a.stop()
            await hub_b.stop()


async def test_only_a_memory_hub_with_nobody_listening_is_unheard() -> None:
    """Hub.unheard lets the relay skip reading what it would publish (app/realtime/relay.py): only when the
    channel is this process's own queue and nothing here listens."""
    backend = InMemoryBackend("memory://")
    async with Broadcast(backend=backend) as broadcast:
        hub = Hub(broadcast, backend=backend)
        await hub.start()
        try:
            assert hub.unheard
            mailbox = hub.subscribe(KIND, {"SKU-1"})
            assert not hub.unheard
            hub.unsubscribe(mailbox)
            assert hub.unheard
            async with hub.listening() as raw:
                assert not hub.unheard
                await hub.publish(KIND, "SKU-1", 1, {"available": 1})
                assert decode_message((await raw.get()).message)[0].key == "SKU-1"
            assert hub.unheard
        finally:
            await hub.stop()
    # a hub not told its backend cannot know who else listens
    async with Broadcast(backend=InMemoryBackend("memory://")) as broadcast:
        assert not Hub(broadcast).unheard
    # nor can one on Redis: other processes share the channel (not started: no connection is made)
    redis = ReconnectingRedisBackend(REDIS_URL)
    assert not Hub(Broadcast(backend=redis), backend=redis).unheard
