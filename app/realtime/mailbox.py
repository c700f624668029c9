"""A subscriber's bounded mailbox: the latest pending message per key.

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
from collections.abc import Callable

from app.realtime.changes import JSONObject

KeyMatcher = Callable[[str], bool]


class ResyncNeeded(Exception):
    """Raised once by `Mailbox.get()` after a resync request: re-read state, then call get() again."""


class MailboxClosed(Exception):
    """Raised by `Mailbox.get()` once the mailbox is unsubscribed or its hub stopped."""


class Mailbox:
    """Latest pending message per key for one subscriber; read it with `get()` or `async for`.

    Meant for a single consumer task. The `data` dicts are shared with other mailboxes: treat them
    as read-only.
    """

    # no __dict__: one mailbox per open subscription, most of them idle
    __slots__ = ("_closed", "_match", "_pending", "_resync", "_seen", "_waiter", "keys", "kind", "on_wake")

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
        # called whenever `get()` would return or raise (a message, a resync, the close): a consumer
        # without a task (app/realtime/lean.py) reads with `take()` then
        self.on_wake: Callable[[], None] | None = None

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
        if self.on_wake is not None:
            self.on_wake()

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

    def take(self) -> tuple[str, int, JSONObject] | None:
        """The next (key, version, data) if one is pending, else None; raises like `get()`."""
        if self._closed:
            raise MailboxClosed
        if self._resync:
            self._resync = False
            raise ResyncNeeded
        if self._pending:
            key = next(iter(self._pending))
            version, data = self._pending.pop(key)
            return key, version, data
        return None

    async def get(self) -> tuple[str, int, JSONObject]:
        """Wait for the next (key, version, data); raises `ResyncNeeded` or `MailboxClosed`."""
        while True:
            taken = self.take()
            if taken is not None:
                return taken
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
