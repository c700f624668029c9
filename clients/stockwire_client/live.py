"""Subscriptions that survive reconnects: resubscribe, resync from versions, never go backwards.

On every (re)connection the client subscribes, then reads the current state with a query on the same
socket; whatever arrives (pushed state, query rows, changes) passes only if its `version` is newer than
what it already handed out for that key, so across any number of reconnects each key's versions go
strictly up and end at the latest state. When the query's rows are in, a `SnapshotComplete` follows:
from then on everything watched is at least as new as the server's state at that (re)connection.
Versions may skip: a state missed while disconnected is replaced by the newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gql import Client
from gql.client import AsyncClientSession
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .connection import RETRYABLE_CODES, error_code
from .operations import OPERATIONS

log = logging.getLogger("stockwire_client")

T = TypeVar("T")
# close codes after which reconnecting cannot help: bad message, unauthorised, forbidden, ...
FATAL_CLOSE_CODES = frozenset({4400, 4401, 4403, 4406, 4409})


class SubscriptionError(Exception):
    """The server refused the subscription (bad key, scope, document or argument); retrying would not help.
    A refusal that says the server is briefly unwell (UNAVAILABLE: its database was busy or unreachable;
    INTERNAL_SERVER_ERROR) is not one: the subscription is tried again, as after a lost connection."""


@dataclass(frozen=True)
class Feed(Generic[T]):
    """A subscription and the query that reads the same state, with how to read their rows."""

    subscription: str  # operation names in the manifest
    snapshot: str | None
    variables: dict[str, Any]
    parse: Callable[[dict[str, Any]], T]
    key_of: Callable[[T], str]
    version_of: Callable[[T], int]


def _close_code(exc: BaseException) -> int | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionClosed) and seen.rcvd is not None:
            return seen.rcvd.code
        if isinstance(seen, InvalidStatus):
            return 4403 if seen.response.status_code in (401, 403) else None
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class LiveOptions:
    """Reconnection backoff (capped exponential, with jitter) and liveness checks of the websocket."""

    min_backoff: float = 0.25
    max_backoff: float = 15.0
    ping_interval: float = 10.0  # a ping when the line is this quiet...
    pong_timeout: float = 10.0  # ...and a reconnect when no pong follows within this


@dataclass
class Resumable(Generic[T]):
    """Iterate for states (T) and None where a (re)connection's snapshot is complete, for ever;
    `versions` is what you have had, per key."""

    url: str
    feed: Feed[T]
    api_key: str | None = None
    options: LiveOptions = field(default_factory=LiveOptions)
    versions: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    refusals: int = 0  # times the server refused it for now (UNAVAILABLE: its database busy) and it was retried

    def _transport(self) -> WebsocketsTransport:
        init = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return WebsocketsTransport(
            url=self.url,
            init_payload=init,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],  # pitfalls.md #8
            ping_interval=self.options.ping_interval,
            pong_timeout=self.options.pong_timeout,
        )

    async def __aiter__(self) -> AsyncIterator[T | None]:
        """States, and None where the snapshot of a (re)connection is complete."""
        backoff = self.options.min_backoff
        while True:
            try:
                async with Client(transport=self._transport()) as session:
                    async for item in self._session(session):
                        backoff = self.options.min_backoff  # it works again: the next failure starts from the bottom
                        if item is None or self._is_new(item):
                            yield item
                log.info("the server completed the subscription; subscribing again")
            except SubscriptionError:
                raise
            except TransportQueryError as exc:
                if error_code(exc.errors) not in RETRYABLE_CODES:
                    raise SubscriptionError(str(exc.errors or exc)) from exc
                self.refusals += 1
                log.warning("subscription refused for now (%s); again in about %.2fs", error_code(exc.errors), backoff)
            except (TransportError, OSError, TimeoutError, ConnectionClosed, InvalidStatus) as exc:
                code = _close_code(exc)
                if code in FATAL_CLOSE_CODES:
                    raise SubscriptionError(f"the server closed the connection with {code}") from exc
                log.warning("subscription lost (%r); reconnecting in about %.2fs", exc, backoff)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.options.max_backoff)
            self.reconnects += 1

    def _is_new(self, item: T) -> bool:
        key, version = self.feed.key_of(item), self.feed.version_of(item)
        if version <= self.versions.get(key, 0):
            return False  # already had it (the state a reconnect re-sends, a repeat, or an older row)
        self.versions[key] = version
        return True

    async def _session(self, session: AsyncClientSession) -> AsyncIterator[T | None]:
        """One connection: subscribe, read the snapshot alongside, then changes until it ends."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        feed = self.feed

        async def changes() -> None:
            operation = OPERATIONS[feed.subscription]
            async for data in session.subscribe(operation.request(feed.variables)):
                for rows in data.values():
                    queue.put_nowait(("row", rows))
            queue.put_nowait(("end", None))

        async def snapshot() -> None:
            if feed.snapshot is None:
                return
            data = await session.execute(OPERATIONS[feed.snapshot].request(feed.variables))
            for rows in data.values():
                for row in rows:
                    queue.put_nowait(("row", row))
            queue.put_nowait(("snapshot", None))

        async def guarded(work: Callable[[], Any]) -> None:
            try:
                await work()
            except Exception as exc:  # handed to the reader, which raises it in the caller's task
                queue.put_nowait(("error", exc))

        tasks = [asyncio.create_task(guarded(changes)), asyncio.create_task(guarded(snapshot))]
        try:
            while True:
                kind, value = await queue.get()
                if kind == "row":
                    yield feed.parse(value)
                elif kind == "snapshot":
                    yield None
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
