"""Per-process fan-out of change messages to local subscribers, with bounded memory per subscriber.

One `Hub` per process holds ONE broadcaster subscription on one channel, however many websocket
subscribers the process serves, and hands each message only to the mailboxes interested in its
(kind, key). Messages are `Change`s (app/realtime/changes.py); each subscriber reads its own
`Mailbox` (app/realtime/mailbox.py), which keeps only the newest pending message per key and
explains the resynchronisation loop a consumer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from broadcaster import Broadcast

from app.realtime.backend import InMemoryBackend, MonitoredBackend
from app.realtime.changes import Change, JSONObject, decode_message, encode_changes
from app.realtime.mailbox import KeyMatcher, Mailbox, MailboxClosed, ResyncNeeded

# Re-exported: callers import the whole realtime vocabulary from here.
__all__ = [
    "DEFAULT_CHANNEL",
    "Change",
    "Hub",
    "JSONObject",
    "KeyMatcher",
    "Mailbox",
    "MailboxClosed",
    "ResyncNeeded",
    "decode_message",
]

logger = logging.getLogger("stockwire.realtime")

DEFAULT_CHANNEL = "stockwire.changes"

_RESUBSCRIBE_INITIAL = 0.05
_RESUBSCRIBE_MAX = 2.0
# Changes per broadcast message in `publish_many`: big enough to amortise, small enough for Redis.
_CHANGES_PER_MESSAGE = 200

_Slot = TypeVar("_Slot")


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
        self._raw_listeners = 0  # open `listening()` contexts
        self.delivered_total = 0  # messages handed to subscribers' mailboxes (a metric)

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def unheard(self) -> bool:
        """Whether a message published now would reach nobody: the backend is this process's own queue
        (memory://, so no other process shares the channel) and no mailbox is open here. A hub built
        without its backend is never sure of that."""
        return isinstance(self._backend, InMemoryBackend) and not self._mailboxes and not self._raw_listeners

    def audience(self) -> Callable[[str, str], bool] | None:
        """Who would hear a message published now, per (kind, key): a predicate, or None when this hub
        cannot know (another process may share the channel, or a raw listener takes every message).
        Only with the backend its own queue (memory://) are this process's mailboxes everyone.
        A mailbox with a key predicate (`match`) counts as hearing every key of its kind: its predicate
        is the subscriber's own code, not called here."""
        if not isinstance(self._backend, InMemoryBackend) or self._raw_listeners:
            return None
        by_key, wildcards = self._by_key, self._wildcards

        def hears(kind: str, key: str) -> bool:
            return kind in wildcards or (kind, key) in by_key

        return hears

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[Any]:
        """The channel's raw messages (broadcaster's subscriber: `await it.get()`), for a listener outside
        the mailboxes, such as a test recording every publication: while it is open, `unheard` is False."""
        self._raw_listeners += 1
        try:
            async with self._broadcast.subscribe(self._channel) as subscriber:
                yield subscriber
        finally:
            self._raw_listeners -= 1

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
        await self._broadcast.publish(self._channel, encode_changes([Change(kind, key, version, data)]))

    async def publish_many(self, changes: Sequence[Change]) -> None:
        """Publish a batch in as few messages as possible (each serialised once for every process).

        Raises like `publish`; a failure part-way may have published some of the batch, which is
        harmless to repeat: receivers drop versions they already have.
        """
        for start in range(0, len(changes), _CHANGES_PER_MESSAGE):
            chunk = changes[start : start + _CHANGES_PER_MESSAGE]
            await self._broadcast.publish(self._channel, encode_changes(chunk))

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


def _discard_from(index: dict[_Slot, set[Mailbox]], slot: _Slot, mailbox: Mailbox) -> None:
    mailboxes = index.get(slot)
    if mailboxes is None:
        return
    mailboxes.discard(mailbox)
    if not mailboxes:
        del index[slot]  # an empty slot per departed key would leak
