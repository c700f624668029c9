"""Per-key rate limits for the mutations that hold stock (reserve, routeAndReserve).

A token bucket per key: `limit` holds per `window_seconds`, refilled continuously, so a client may
burst up to `limit` at once and sustain `limit / window_seconds` per second. In-process: with N
server processes behind a load balancer a key may get up to N times the limit; the point is to stop
one runaway client from holding a whole catalogue, not to meter exactly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# keys seen recently; an idle key's bucket is full again anyway, so forgetting it changes nothing
_MAX_KEYS = 100_000


class TokenBucketLimiter:
    def __init__(self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit  # 0: no limit
        self.rate = limit / window_seconds if window_seconds > 0 else float("inf")
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Take `cost` tokens from this key's bucket if it has them."""
        if self.limit <= 0:
            return True
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - at) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > _MAX_KEYS:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there again (0 if they are now)."""
        if self.limit <= 0 or key not in self._buckets:
            return 0.0
        tokens, at = self._buckets[key]
        tokens = min(float(self.limit), tokens + (self.clock() - at) * self.rate)
        return max(0.0, (cost - tokens) / self.rate)


class RepeatPenalty:
    """Who was refused lately, by API key and by client address: a refusal repeated within
    `window_seconds` of the previous one from the same key or the same address earns `delay_seconds`
    (the caller waits that long before answering it; a waiting coroutine costs the server nothing).

    Used for requests refused as too costly (app/graphql/limits.py): refusing one takes parsing and
    counting its whole body, so a client looping such a request would otherwise keep the event loop
    busy and every other request queued behind it. The first refusal is answered at once; only the
    repeats wait, and only those: the key's other requests are not touched (the storefront key is
    shared by every shopper, so penalising all its requests would let anyone slow everyone down).
    """

    def __init__(
        self, delay_seconds: float, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.delay = delay_seconds  # 0: no penalty
        self.window = window_seconds
        self.clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()  # "key:<id>" / "address:<host>" -> last refusal

    def refused(self, key: str | None, address: str | None) -> float:
        """Note a refusal from this key and address; the seconds its answer is to wait (0: the first)."""
        if self.delay <= 0:
            return 0.0
        now = self.clock()
        repeat = False
        for who in (f"key:{key}" if key else None, f"address:{address}" if address else None):
            if who is None:
                continue
            last = self._last.pop(who, None)
            repeat = repeat or (last is not None and now - last < self.window)
            self._last[who] = now  # a client that keeps trying keeps its penalty
        while len(self._last) > _MAX_KEYS:
            self._last.popitem(last=False)
        return self.delay if repeat else 0.0
