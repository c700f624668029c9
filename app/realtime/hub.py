"""Per-process fan-out of change messages to local subscribers, with bounded memory per subscriber.

One `Hub` per process holds ONE broadcaster subscription on one channel, however many websocket
subscribers the process serves, and hands each message only to the mailboxes interested in its
(kind, key). Messages are JSON text:

    {"kind": "availability", "key": "SKU-1|web", "version": 42, "data": {...}}

or several at once, as the outbox relay sends a batch (one Redis message, serialised once):

    {"changes": [{"kind": ..., "key": ..., "version": ..., "data": ...}, ...]}

`version` increases per (kind, key) at the source, but the transport may reorder or repeat
messages. A `Mailbox` therefore keeps at most one pending message per key, the newest, and drops
anything not newer than what it already holds or delivered: a slow reader costs memory
proportional to the number of keys it watches, never to the message rate, and it skips straight to
the latest state, which is all an availability subscriber needs.

Resynchronisation: when the broadcast backend reconnects (messages in the gap are lost) the hub
calls `request_resync()` on every mailbox. The next `Mailbox.get()` then raises `ResyncNeeded`
(once per request); the consumer re-reads state from the database, sends it, calls
`mark_delivered(key, version)` for what it sent and goes back to `get()`:

    while True:
        try:
            async for key, version, data in mailbox:
                await send(key, data)
        except ResyncNeeded:
            for key, version, data in await read_snapshot():
                await send(key, data)
                mailbox.mark_delivered(key, version)
            continue
        break  # the mailbox was closed (unsubscribed or hub stopped)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from broadcaster import Broadcast

from app.realtime.redis_backend import MonitoredBackend

logger = logging.getLogger("stockwire.realtime")

DEFAULT_CHANNEL = "stockwire.changes"

JSONObject = dict[str, Any]
KeyMatcher = Callable[[str], bool]

_RESUBSCRIBE_INITIAL = 0.05
_RESUBSCRIBE_MAX = 2.0
# Changes per broadcast message in `publish_many`: big enough to amortise, small enough for Redis.
_CHANGES_PER_MESSAGE = 200

_Slot = TypeVar("_Slot")


@dataclass(frozen=True, slots=True)
class Change:
    """One key's new state, as published."""

    kind: str
    key: str
    version: int
    data: JSONObject

    def as_json(self) -> JSONObject:
        return {"kind": self.kind, "key": self.key, "version": self.version, "data": self.data}


class ResyncNeeded(Exception):
    """Raised once by `Mailbox.get()` after a resync request: re-read state, then call get() again."""


class MailboxClosed(Exception):
    """Raised by `Mailbox.get()` once the mailbox is unsubscribed or its hub stopped."""


class Mailbox:
    """Latest pending message per key for one subscriber; read it with `get()` or `async for`.

    Meant for a single consumer task. The `data` dicts are shared with other mailboxes: treat them
    as read-only.
    """

    def __init__(self, kind: str, keys: frozenset[str] | None, match: KeyMatcher | None) -> None:
        self.kind = kind
        self.keys = keys
        self._match = match
        # dict order = order of first arrival among pending keys; replacing a value keeps its place.
        self._pending: dict[str, tuple[int, JSONObject]] = {}
        # Highest version pending or delivered per key: bounded by the number of keys, not messages.
        self._seen: dict[str, int] = {}
        # No asyncio.Event: two per mailbox cost about 1 KB (each allocates its waiter deque) for
        # thousands of mostly idle subscribers; a future exists only while the consumer waits.
        self._waiter: asyncio.Future[None] | None = None
        self._resync = False
        self._closed = False

    def __len__(self) -> int:
        """Number of keys with a message waiting."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def resync_requested(self) -> bool:
        """True when messages may have been lost; cleared when `get()` raises `ResyncNeeded`.

        Set it through `request_resync()`, which also wakes a waiting `get()`.
        """
        return self._resync

    def request_resync(self) -> None:
        self._resync = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wants(self, key: str) -> bool:
        """Whether a message for `key` (of this mailbox's kind) belongs here."""
        if self.keys is not None:
            return key in self.keys
        return self._match is None or self._match(key)

    def offer(self, key: str, version: int, data: JSONObject) -> bool:
        """Queue a message unless one at least as new is already pending or delivered."""
        if self._closed or self._is_stale(key, version):
            return False
        self._seen[key] = version
        self._pending[key] = (version, data)
        self._wake()
        return True

    def mark_delivered(self, key: str, version: int) -> None:
        """Record that the consumer already sent `key` at `version` (e.g. in a snapshot)."""
        if not self._is_stale(key, version):
            self._seen[key] = version
        pending = self._pending.get(key)
        if pending is not None and pending[0] <= version:
            del self._pending[key]

    def forget(self, key: str) -> None:
        self._pending.pop(key, None)
        self._seen.pop(key, None)

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._wake()

    async def get(self) -> tuple[str, int, JSONObject]:
        """Wait for the next (key, version, data); raises `ResyncNeeded` or `MailboxClosed`."""
        while True:
            if self._closed:
                raise MailboxClosed
            if self._resync:
                self._resync = False
                raise ResyncNeeded
            if self._pending:
                key = next(iter(self._pending))
                version, data = self._pending.pop(key)
                return key, version, data
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def __aiter__(self) -> Mailbox:
        return self

    async def __anext__(self) -> tuple[str, int, JSONObject]:
        # ResyncNeeded propagates out of the `async for`; MailboxClosed ends it quietly.
        try:
            return await self.get()
        except MailboxClosed:
            raise StopAsyncIteration from None

    def _is_stale(self, key: str, version: int) -> bool:
        seen = self._seen.get(key)
        return seen is not None and version <= seen


class Hub:
    """One broadcaster subscription per process, fanned out to local mailboxes by (kind, key)."""

    def __init__(
        self, broadcast: Broadcast, channel: str = DEFAULT_CHANNEL, backend: MonitoredBackend | None = None
    ) -> None:
        """`backend`: the one `broadcast` was built with, if it reports its health (broadcaster has no
        public accessor for it, so the caller that built both hands it over)."""
        self._broadcast = broadcast
        self._channel = channel
        self._by_key: dict[tuple[str, str], set[Mailbox]] = {}
        self._wildcards: dict[str, set[Mailbox]] = {}
        self._mailboxes: set[Mailbox] = set()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False
        self._backend = backend
        self._observers: list[Callable[[list[Change]], None]] = []
        self.delivered_total = 0  # messages handed to subscribers' mailboxes (a metric)

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def alive(self) -> bool:
        """For /readyz: the hub is subscribed and the backend (if it reports health) is listening."""
        running = self._task is not None and not self._task.done() and self._subscribed
        return running and (self._backend is None or self._backend.listener_alive)

    async def start(self) -> None:
        """Subscribe to the channel; returns once the subscription is in place."""
        if self._task is not None:
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name=f"stockwire-hub:{self._channel}")
        try:
            await ready
        except BaseException:
            await self._cancel_task()
            raise
        if self._backend is not None:
            self._backend.add_reconnect_callback(self.request_resync)

    async def stop(self) -> None:
        if self._backend is not None:
            self._backend.remove_reconnect_callback(self.request_resync)
        await self._cancel_task()
        for mailbox in self._mailboxes:
            mailbox.close()
        self._mailboxes.clear()
        self._by_key.clear()
        self._wildcards.clear()

    async def publish(self, kind: str, key: str, version: int, data: JSONObject) -> None:
        """Serialise once and publish to every process's hub (this one included).

        Raises whatever the backend raises (`PublishError` for Redis): the caller still owns the
        change and should retry it.
        """
        await self._broadcast.publish(self._channel, _encode(Change(kind, key, version, data).as_json()))

    async def publish_many(self, changes: Sequence[Change]) -> None:
        """Publish a batch in as few messages as possible (each serialised once for every process).

        Raises like `publish`; a failure part-way may have published some of the batch, which is
        harmless to repeat: receivers drop versions they already have.
        """
        for start in range(0, len(changes), _CHANGES_PER_MESSAGE):
            chunk = changes[start : start + _CHANGES_PER_MESSAGE]
            body = chunk[0].as_json() if len(chunk) == 1 else {"changes": [c.as_json() for c in chunk]}
            await self._broadcast.publish(self._channel, _encode(body))

    def observe(self, observer: Callable[[list[Change]], None]) -> None:
        """Also hand every decoded message (from any process, this one's included) to `observer`."""
        self._observers.append(observer)

    def subscribe(self, kind: str, keys: set[str] | None = None, match: KeyMatcher | None = None) -> Mailbox:
        """A mailbox for `kind`: only `keys`, or keys accepted by `match`, or (neither given) all keys."""
        if keys is not None and match is not None:
            raise ValueError("pass keys or match, not both")
        mailbox = Mailbox(kind, frozenset(keys) if keys is not None else None, match)
        self._mailboxes.add(mailbox)
        if mailbox.keys is None:
            self._wildcards.setdefault(kind, set()).add(mailbox)
        else:
            for key in mailbox.keys:
                self._by_key.setdefault((kind, key), set()).add(mailbox)
        return mailbox

    def narrow(self, mailbox: Mailbox, keys: set[str]) -> None:
        """Keep only `keys` of a keyed mailbox (e.g. the codes that turned out to exist)."""
        if mailbox.keys is None:
            raise ValueError("only a mailbox subscribed by keys can be narrowed")
        dropped = mailbox.keys - keys
        mailbox.keys = mailbox.keys & frozenset(keys)
        for key in dropped:
            _discard_from(self._by_key, (mailbox.kind, key), mailbox)
            mailbox.forget(key)

    def sizes(self) -> dict[str, int]:
        """Entries of the hub's indexes (all 0 once every subscriber has left)."""
        return {
            "mailboxes": len(self._mailboxes),
            "keys": len(self._by_key),
            "wildcard_kinds": len(self._wildcards),
        }

    def unsubscribe(self, mailbox: Mailbox) -> None:
        mailbox.close()
        self._mailboxes.discard(mailbox)
        if mailbox.keys is None:
            _discard_from(self._wildcards, mailbox.kind, mailbox)
        else:
            for key in mailbox.keys:
                _discard_from(self._by_key, (mailbox.kind, key), mailbox)

    def request_resync(self) -> None:
        """Tell every mailbox that messages may have been lost (wired to the backend's reconnects)."""
        logger.info("change messages may have been lost; asking %d subscriber(s) to resync", len(self._mailboxes))
        for mailbox in self._mailboxes:
            mailbox.request_resync()

    def dispatch(self, message: object) -> int:
        """Deliver one raw message to the interested mailboxes; returns how many took it.

        Malformed messages are logged and dropped: one bad publisher must not stop the hub.
        """
        try:
            changes = decode_message(message)
        except (ValueError, TypeError, RecursionError) as exc:
            logger.warning("dropping malformed change message (%s): %.200r", exc, message)
            return 0
        for observer in self._observers:
            try:
                observer(changes)
            except Exception:
                logger.exception("change observer %r failed", observer)
        delivered = 0
        for change in changes:
            kind, key, version, data = change.kind, change.key, change.version, change.data
            for mailbox in list(self._by_key.get((kind, key), ())):
                delivered += mailbox.offer(key, version, data)
            for mailbox in list(self._wildcards.get(kind, ())):
                delivered += self._offer_wildcard(mailbox, key, version, data)
        return delivered

    def _offer_wildcard(self, mailbox: Mailbox, key: str, version: int, data: JSONObject) -> bool:
        try:
            return mailbox.wants(key) and mailbox.offer(key, version, data)
        except Exception:
            # A subscriber's match predicate is foreign code; its bug must not reach other mailboxes.
            logger.exception("key matcher of a %s mailbox failed on %r", mailbox.kind, key)
            return False

    async def _run(self, ready: asyncio.Future[None]) -> None:
        """Hold the subscription and dispatch; re-subscribe (and ask for a resync) if it ever fails."""
        delay = _RESUBSCRIBE_INITIAL
        while True:
            try:
                async with self._broadcast.subscribe(self._channel) as subscriber:
                    self._subscribed = True
                    if ready.done():
                        self.request_resync()  # messages may have passed while we were not subscribed
                    else:
                        ready.set_result(None)
                    delay = _RESUBSCRIBE_INITIAL
                    while True:
                        event = await subscriber.get()
                        self.delivered_total += self.dispatch(event.message)
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                logger.exception("hub subscription to %s failed; re-subscribing", self._channel)
            self._subscribed = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESUBSCRIBE_MAX)

    async def _cancel_task(self) -> None:
        task, self._task = self._task, None
        self._subscribed = False
        if task is not None:
            task.cancel()
            # wait() rather than awaiting the task: a cancellation of the caller still propagates.
            await asyncio.wait([task])


def _encode(body: JSONObject) -> str:
    # allow_nan=False: NaN is not JSON, and other consumers would choke on it
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def decode_message(message: object) -> list[Change]:
    """Every change in one message; raises (and the whole message is dropped) if any is malformed."""
    if not isinstance(message, str | bytes):
        raise TypeError(f"expected JSON text, got {type(message).__name__}")
    body = json.loads(message)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if "changes" in body:
        changes = body["changes"]
        if not isinstance(changes, list):
            raise ValueError("changes must be a list")
        return [_change(item) for item in changes]
    return [_change(body)]


def _change(body: object) -> Change:
    if not isinstance(body, dict):
        raise ValueError("a change must be a JSON object")
    kind, key, version, data = body.get("kind"), body.get("key"), body.get("version"), body.get("data")
    if not isinstance(kind, str) or not isinstance(key, str):
        raise ValueError("kind and key must be strings")
    # bool is an int subclass, and True is no version number
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("version must be an integer")
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    return Change(kind, key, version, data)


def _discard_from(index: dict[_Slot, set[Mailbox]], slot: _Slot, mailbox: Mailbox) -> None:
    mailboxes = index.get(slot)
    if mailboxes is None:
        return
    mailboxes.discard(mailbox)
    if not mailboxes:
        del index[slot]  # an empty slot per departed key would leak
