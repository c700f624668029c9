"""ReconnectingRedisBackend against real Redis servers: delivery, outage, restart, a frozen server.

Outage tests run their own throw-away redis-server on a free port; the shared one on 6379 is
never stopped. Every wait is bounded, so a listener that hangs fails the test instead of the run.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from uuid import uuid4

import pytest
from broadcaster import Broadcast, Event
from redis.exceptions import ConnectionError as RedisConnectionError

from app.realtime.hub import Hub, ResyncNeeded
from app.realtime.redis_backend import (
    InMemoryBackend,
    MonitoredBackend,
    PublishError,
    ReconnectingRedisBackend,
    make_backend,
)
from tests.services import REDIS_URL, require_redis

TIMEOUT = 10.0


def _channel() -> str:
    return f"stockwire.test.{uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    # Polling, because health is a property to read, not an event to await (as /readyz reads it).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _answers_ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        return await asyncio.wait_for(reader.readline(), 1) == b"+PONG\r\n"
    except OSError:
        return False
    finally:
        writer.close()
        await writer.wait_closed()


class PrivateRedis:
    """A redis-server of the test's own, which it may kill, freeze and restart on the same port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not await _answers_ping(self.port):
            if self._proc.returncode is not None:
                pytest.fail(f"redis-server on port {self.port} exited with {self._proc.returncode}")
            if loop.time() > deadline:
                pytest.fail(f"redis-server on port {self.port} did not answer PING within {TIMEOUT}s")
            await asyncio.sleep(0.02)

    def send_signal(self, sig: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    async def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.kill()  # SIGKILL: no shutdown, like a crash; it also ends a SIGSTOPped process
        await asyncio.wait_for(proc.wait(), TIMEOUT)


@asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


class ReconnectCounter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:  # async on purpose: the backend must await it
        self.calls += 1


# -- against the shared Redis -----------------------------------------------------------------


@pytest.mark.redis
async def test_subscriber_receives_exact_message_published_through_redis() -> None:
    require_redis()
    channel, other = _channel(), _channel()
    message = 'héllo {"sku": "SKU-1", "n": 1}'
    backend = ReconnectingRedisBackend(REDIS_URL)
    async with Broadcast(backend=backend) as broadcast, broadcast.subscribe(channel) as subscriber:
        assert backend.listener_alive
        assert backend.last_error is None
        await broadcast.publish(other, "not for this subscriber")
        await broadcast.publish(channel, message)
        event = await asyncio.wait_for(subscriber.get(), TIMEOUT)
    assert event == Event(channel=channel, message=message)
    assert not backend.listener_alive


@pytest.mark.redis
async def test_second_process_receives_and_unsubscribe_stops_delivery() -> None:
    require_redis()
    channel = _channel()
    sender = Broadcast(backend=ReconnectingRedisBackend(REDIS_URL))
    receiver_backend = ReconnectingRedisBackend(REDIS_URL)
    receiver = Broadcast(backend=receiver_backend)
    async with sender, receiver:
        async with receiver.subscribe(channel) as subscriber:
            for n in range(3):
                await sender.publish(channel, f"m{n}")
            got = [(await asyncio.wait_for(subscriber.get(), TIMEOUT)).message for _ in range(3)]
        assert got == ["m0", "m1", "m2"]
        # Re-subscribing after the last subscriber left must work again (UNSUBSCRIBE then SUBSCRIBE).
        async with receiver.subscribe(channel) as subscriber:
            await sender.publish(channel, "again")
            assert (await asyncio.wait_for(subscriber.get(), TIMEOUT)).message == "again"
        assert receiver_backend.listener_alive


async def test_connect_fails_fast_when_redis_is_unreachable() -> None:
    backend = ReconnectingRedisBackend(f"redis://127.0.0.1:{_free_port()}", socket_timeout=1.0)
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(backend.connect(), TIMEOUT)
    assert not backend.listener_alive
    assert backend.last_error is not None
    with pytest.raises(PublishError):
        await backend.publish("any", "message")
    await backend.disconnect()  # harmless after a failed connect


def test_make_backend_picks_by_scheme() -> None:
    memory = make_backend("memory://")
    redis_backend = make_backend("redis://127.0.0.1:6379/0")
    assert isinstance(memory, InMemoryBackend)
    assert isinstance(redis_backend, ReconnectingRedisBackend)
    assert isinstance(memory, MonitoredBackend)
    assert isinstance(redis_backend, MonitoredBackend)
    assert memory.listener_alive and memory.last_error is None
    with pytest.raises(ValueError, match="unsupported"):
        make_backend("kafka://localhost:9092")


# -- against a private Redis that the tests kill and restart --------------------------------


@pytest.mark.redis
async def test_listener_survives_redis_restart_and_keeps_delivering() -> None:
    require_redis()
    channel = _channel()
    async with private_redis() as server:
        backend = ReconnectingRedisBackend(server.url)
        reconnects = ReconnectCounter()
        backend.add_reconnect_callback(reconnects)
        async with Broadcast(backend=backend) as broadcast, broadcast.subscribe(channel) as subscriber:
            await broadcast.publish(channel, "before")
            assert (await asyncio.wait_for(subscriber.get(), TIMEOUT)).message == "before"
            assert backend.listener_alive
            assert reconnects.calls == 0  # the first connect is not a REconnect

            await server.kill()
            await _eventually(lambda: not backend.listener_alive, "the listener to notice the outage")
            assert backend.last_error is not None
            with pytest.raises(PublishError):
                await asyncio.wait_for(broadcast.publish(channel, "lost"), TIMEOUT)

            await server.start()
            await _eventually(lambda: backend.listener_alive and reconnects.calls == 1, "the listener to reconnect")
            assert backend.last_error is None
            await broadcast.publish(channel, "after")
            assert (await asyncio.wait_for(subscriber.get(), TIMEOUT)).message == "after"
            assert reconnects.calls == 1


@pytest.mark.redis
async def test_channel_subscribed_during_outage_is_subscribed_on_reconnect() -> None:
    require_redis()
    channel = _channel()
    async with private_redis() as server:
        backend = ReconnectingRedisBackend(server.url)
        async with Broadcast(backend=backend) as broadcast:
            await server.kill()
            await _eventually(lambda: not backend.listener_alive, "the listener to notice the outage")
            # Must neither raise nor hang while Redis is down.
            async with broadcast.subscribe(channel) as subscriber:
                await server.start()
                await _eventually(lambda: backend.listener_alive, "the listener to reconnect")
                await broadcast.publish(channel, "hello")
                assert (await asyncio.wait_for(subscriber.get(), TIMEOUT)).message == "hello"


@pytest.mark.redis
async def test_frozen_server_is_detected_by_ping_and_recovered() -> None:
    require_redis()
    channel = _channel()
    async with private_redis() as server:
        # A SIGSTOPped server keeps its sockets open and answers nothing: only the PING probe notices.
        backend = ReconnectingRedisBackend(server.url, socket_timeout=0.5, publish_timeout=1.0, ping_interval=0.2)
        reconnects = ReconnectCounter()
        backend.add_reconnect_callback(reconnects)
        async with Broadcast(backend=backend) as broadcast, broadcast.subscribe(channel) as subscriber:
            server.send_signal(signal.SIGSTOP)
            try:
                await _eventually(lambda: not backend.listener_alive, "the PING probe to time out")
                with pytest.raises(PublishError):
                    await asyncio.wait_for(broadcast.publish(channel, "lost"), TIMEOUT)
            finally:
                server.send_signal(signal.SIGCONT)
            await _eventually(lambda: backend.listener_alive and reconnects.calls == 1, "the listener to reconnect")
            await broadcast.publish(channel, "after")
            assert (await asyncio.wait_for(subscriber.get(), TIMEOUT)).message == "after"


@pytest.mark.redis
async def test_hub_mailboxes_are_asked_to_resync_after_redis_restart() -> None:
    require_redis()
    async with private_redis() as server:
        backend = ReconnectingRedisBackend(server.url)
        async with Broadcast(backend=backend) as broadcast:
            hub = Hub(broadcast, channel=_channel(), backend=backend)
            await hub.start()
            try:
                mailbox = hub.subscribe("availability", {"SKU-1"})
                assert hub.alive
                await server.kill()
                await _eventually(lambda: not hub.alive, "the hub to report the outage")
                await server.start()
                with pytest.raises(ResyncNeeded):
                    await asyncio.wait_for(mailbox.get(), TIMEOUT)
                assert hub.alive
                await hub.publish("availability", "SKU-1", 1, {"available": 3})
                assert await asyncio.wait_for(mailbox.get(), TIMEOUT) == ("SKU-1", 1, {"available": 3})
            finally:
                await hub.stop()
