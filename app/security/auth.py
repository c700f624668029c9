"""Authentication: a bearer token to the key behind it, cached in-process for a few seconds.

Every request presents a key, so a database read per request would cost the reserve path a round
trip. Lookups are cached for `ttl_seconds` (default 5), both hits and misses; so a key revoked in
another process stops working there within that time (at once in the process that revoked it).
Concurrent requests with the same uncached key share one lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.db.engine import Database
from app.db.tenancy import DEFAULT_TENANT
from app.security import keys
from app.security.scopes import Scope
from app.services.context import utc_now

# last_used_at is bookkeeping for operators ("which keys are still in use?"): minute precision is plenty
_TOUCH_EVERY = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: the key a request authenticated with."""

    key_id: str
    name: str
    prefix: str
    scopes: frozenset[Scope]
    tenant_id: int = DEFAULT_TENANT  # the tenant the key belongs to
    # an operator's key: the tenants (ids) it may act for, one named per request (empty: its own only)
    acts_for: frozenset[int] = frozenset()

    @property
    def is_operator(self) -> bool:
        return bool(self.acts_for)

    def has_any(self, scopes: frozenset[Scope]) -> bool:
        return not self.scopes.isdisjoint(scopes)


def bearer_token(header: str | None) -> str | None:
    """`Bearer <key>` (scheme case-insensitive) to the key; anything else to None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class _Lru:
    """A bounded map of token digest -> (principal or None, expiry), oldest evicted first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, tuple[Principal | None, float]] = OrderedDict()

    def get(self, key: bytes, now: float) -> tuple[bool, Principal | None]:
        entry = self.entries.get(key)
        if entry is None:
            return False, None
        if entry[1] <= now:
            del self.entries[key]
            return False, None
        return True, entry[0]

    def put(self, key: bytes, principal: Principal | None, expires: float) -> None:
        self.entries[key] = (principal, expires)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class Authenticator:
    def __init__(
        self,
        db: Database,
        ttl_seconds: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        # kept apart so a flood of made-up keys cannot evict the real ones
        self._known = _Lru(max_entries)
        self._unknown = _Lru(max_entries)
        self._inflight: dict[bytes, asyncio.Task[Principal | None]] = {}
        # bumped by forget_all: a lookup that started before a revocation does not cache its answer
        self._generation = 0

    async def authenticate(self, token: str | None) -> Principal | None:
        """The principal for this key, or None when it is missing, malformed, unknown or revoked."""
        if not token or keys.prefix_of(token) is None:
            return None
        cache_key = hashlib.sha256(token.encode()).digest()  # the raw key is never kept in memory
        now = self.clock()
        for cache in (self._known, self._unknown):
            hit, principal = cache.get(cache_key, now)
            if hit:
                return principal
        task = self._inflight.get(cache_key)
        if task is None:
            task = asyncio.create_task(self._lookup(token, cache_key))
            self._inflight[cache_key] = task
            task.add_done_callback(lambda _: self._inflight.pop(cache_key, None))
        # shielded: one caller going away must not cancel the lookup the others wait for
        return await asyncio.shield(task)

    async def _lookup(self, token: str, cache_key: bytes) -> Principal | None:
        generation = self._generation
        found = await keys.find_key(self.db, token)
        expires = self.clock() + self.ttl_seconds
        if found is None or not found.active:
            if generation == self._generation:
                self._unknown.put(cache_key, None, expires)
            return None
        now = self.wall_clock()
        if found.last_used_at is None or now - found.last_used_at >= _TOUCH_EVERY:
            await keys.touch(self.db, found.id, now)
        acts_for = (
            frozenset((await keys.tenant_ids(self.db, found.acts_for)).values()) if found.acts_for else frozenset()
        )
        principal = Principal(
            key_id=found.id,
            name=found.name,
            prefix=found.prefix,
            scopes=found.scopes,
            tenant_id=found.tenant_id,
            acts_for=acts_for,
        )
        if generation == self._generation:
            self._known.put(cache_key, principal, expires)
        return principal

    def forget_all(self) -> None:
        """After a key is created or revoked here: this process sees the change at once."""
        self._generation += 1
        self._known.entries.clear()
        self._unknown.entries.clear()
