"""Broadcaster backends that report their health and tell subscribers when they missed messages.

broadcaster 0.3.1's own Redis backend starts listening before SUBSCRIBE is confirmed and never
reconnects: after a Redis restart its listener dies and every subscriber waits forever
(pitfalls.md #1, #2). `ReconnectingRedisBackend` replaces it:

* one dedicated pub/sub connection, read by one listener task that is the only reader, so a
  SUBSCRIBE reply can be matched to the caller waiting for it;
* when that connection fails the listener reconnects with capped exponential backoff,
  re-subscribes every channel and then runs the reconnect callbacks, because anything published
  while it was away is lost for good (Redis pub/sub keeps nothing) and subscribers must re-read;
* an idle connection is probed with PING, so a silently dead peer is noticed too;
* `publish` goes through a separate client with socket timeouts and an overall deadline, and
  raises `PublishError` instead of hanging, so an outbox relay keeps its rows and retries.

`InMemoryBackend` (app/realtime/backend.py) is a single-process backend with the same health
interface, so the app treats both alike; `make_backend(url)` picks one from the URL. The Redis one
lives in app/realtime/redis_pubsub.py; every name stays importable from here.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from app.realtime.backend import InMemoryBackend, MonitoredBackend, PublishError, ReconnectCallback
from app.realtime.redis_pubsub import ReconnectingRedisBackend

__all__ = [
    "Backend",
    "InMemoryBackend",
    "MonitoredBackend",
    "PublishError",
    "ReconnectCallback",
    "ReconnectingRedisBackend",
    "make_backend",
]

logger = logging.getLogger("stockwire.realtime")

Backend = InMemoryBackend | ReconnectingRedisBackend


def make_backend(url: str, start_while_down: bool = False) -> Backend:
    """The backend for "memory://" or "redis://host:port[/db]" (also "rediss://")."""
    scheme = urlparse(url).scheme
    if scheme == "memory":
        return InMemoryBackend(url)
    if scheme in ("redis", "rediss"):
        return ReconnectingRedisBackend(url, start_while_down=start_while_down)
    raise ValueError(f"unsupported broadcast URL scheme {scheme!r}: use memory:// or redis://")
