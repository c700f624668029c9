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
