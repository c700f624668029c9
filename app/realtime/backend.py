"""What the app needs from any broadcaster backend, and the single-process one.

`MonitoredBackend` is the health interface /readyz and the hub read; `InMemoryBackend` (the
embedded default) and `ReconnectingRedisBackend` (app/realtime/redis_pubsub.py) both offer it, so
the app treats them alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from broadcaster import BroadcastBackend, Event

ReconnectCallback = Callable[[], Awaitable[None] | None]


class PublishError(Exception):
    """A message could not be handed to the broker; the caller still owns it and should retry."""


@runtime_checkable
class MonitoredBackend(Protocol):
    """What /readyz and the hub need from any backend."""

    @property
    def listener_alive(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    def add_reconnect_callback(self, callback: ReconnectCallback) -> None: ...

    def remove_reconnect_callback(self, callback: ReconnectCallback) -> None: ...


class InMemoryBackend(BroadcastBackend):
    """A single-process broadcaster backend, with the health interface of the Redis one.

    broadcaster's own memory backend is not part of its public API (it lives in a private module),
    and this is all of it: a queue of published events, handed on for the subscribed channels.
    """

    def __init__(self, url: str) -> None:
        # BroadcastBackend.__init__ only raises NotImplementedError, so it is not called.
        self._subscribed: set[str] = set()
        self._published: asyncio.Queue[Event] = asyncio.Queue()

    async def connect(self) -> None:
        """Nothing to connect to."""

    async def disconnect(self) -> None:
        """Nothing to disconnect from."""

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(self, channel: str, message: Any) -> None:
        self._published.put_nowait(Event(channel=channel, message=message))

    async def next_published(self) -> Event:
        while True:
            event = await self._published.get()
            if event.channel in self._subscribed:
                return event

    @property
    def listener_alive(self) -> bool:
        return True

    @property
    def last_error(self) -> str | None:
        return None

    def add_reconnect_callback(self, callback: ReconnectCallback) -> None:
        """Nothing to do: an in-process queue never disconnects."""

    def remove_reconnect_callback(self, callback: ReconnectCallback) -> None:
        """Nothing to do: see add_reconnect_callback."""
