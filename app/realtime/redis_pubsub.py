"""`ReconnectingRedisBackend`: Redis pub/sub for broadcaster that survives Redis restarts.

Why broadcaster's own Redis backend is not used, and how this one behaves: app/realtime/redis_backend.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from typing import Any

from broadcaster import BroadcastBackend, Event
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.realtime.backend import PublishError, ReconnectCallback

logger = logging.getLogger("stockwire.realtime")

# These mean "the network or the server went away"; anything else is a bug and gets a traceback.
# (builtin ConnectionError and TimeoutError are OSError subclasses.)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

# While Redis stays down, repeat the warning at most this often instead of once per attempt.
_DOWN_LOG_INTERVAL = 30.0


class ReconnectingRedisBackend(BroadcastBackend):
    """Redis pub/sub for broadcaster that survives Redis restarts and says when it is not listening.

    `connect()` raises if Redis cannot be reached at all (unless `start_while_down`, as the service
    uses it: then it keeps trying in the background); after that the backend never gives up.
    `subscribe()` never raises: if Redis is down the channel is remembered and subscribed on
    reconnect (and the reconnect callbacks fire), because broadcaster's
    `Broadcast.subscribe` mishandles an exception from the backend.
    """

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 2.0,
        publish_timeout: float = 5.0,
        ping_interval: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        start_while_down: bool = False,
    ) -> None:
        # BroadcastBackend.__init__ only raises NotImplementedError, so it is not called.
        self._url = url
        # True (the service): a Redis that is down at start is waited for in the background, so a
        # replica starts during an outage and serves queries and reserves; push resumes when it returns
        self._start_while_down = start_while_down
        self._socket_timeout = socket_timeout
        self._publish_timeout = publish_timeout
        self._ping_interval = ping_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

        self._channels: set[str] = set()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._callbacks: list[ReconnectCallback] = []
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        # Serialises writes on the pub/sub connection (listener PINGs vs callers' SUBSCRIBEs).
        self._write_lock = asyncio.Lock()

        self._client: Redis | None = None
        self._conn: AbstractConnection | None = None
        # The connection callers may send SUBSCRIBE on; None while (re)connecting.
        self._ready_conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._alive = False
        self._last_error: str | None = None
        self._last_down_log = float("-inf")

    # -- health -------------------------------------------------------------------------------

    @property
    def listener_alive(self) -> bool:
        """True only while connected with every wanted channel's SUBSCRIBE confirmed."""
        return self._alive

    @property
    def last_error(self) -> str | None:
        """Why the listener is not alive; None while it is."""
        return self._last_error

    def add_reconnect_callback(self, callback: ReconnectCallback) -> None:
        """Run `callback` after every REconnect (not the first connect), on the listener task.

        Messages published while disconnected are lost, so the callback should make subscribers
        re-read state. Keep it quick: the listener reads nothing while it runs.
        """
        self._callbacks.append(callback)

    def remove_reconnect_callback(self, callback: ReconnectCallback) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    # -- broadcaster's backend interface --------------------------------------------------------

    async def connect(self) -> None:
        if self._task is not None:
            return
        self._client = Redis.from_url(
            self._url,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            # One quick retry absorbs the stale pooled connection left by a Redis restart.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        )
        try:
            await self._open_session()
        except BaseException as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            await self._close_conn()
            if self._start_while_down and isinstance(exc, _CONNECTION_ERRORS):
                logger.warning("Redis unreachable at start (%s); serving without push until it answers", exc)
                self._last_down_log = asyncio.get_running_loop().time()
                # the listener opens the session when Redis answers, then runs the reconnect
                # callbacks: subscribers re-read what they missed
                self._task = asyncio.create_task(self._run_listener(), name="stockwire-redis-listener")
                return
            await self._client.aclose()
            self._client = None
            raise
        self._task = asyncio.create_task(self._run_listener(), name="stockwire-redis-listener")

    async def disconnect(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() rather than awaiting the task: a cancellation of disconnect() itself still propagates.
            await asyncio.wait([task])
        self._alive = False
        await self._close_conn()
        self._resolve_all_waiters(False)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if not await self._send_subscribe(channel):
            logger.warning("SUBSCRIBE %s not confirmed now; it will be renewed on reconnect", channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        async with self._write_lock:
            conn = self._ready_conn
            if conn is None or not conn.is_connected:
                return  # a reconnect only subscribes what is still in _channels
            try:
                await conn.send_command("UNSUBSCRIBE", channel)
            except _CONNECTION_ERRORS as exc:
                # The listener notices the broken connection on its own; nothing to undo here.
                logger.warning("UNSUBSCRIBE %s failed: %s", channel, exc)

    async def publish(self, channel: str, message: Any) -> None:
        client = self._client
        if client is None:
            raise PublishError("the Redis backend is not connected")
        try:
            # asyncio.timeout rather than wait_for: 3.11's wait_for can swallow a racing cancellation
            async with asyncio.timeout(self._publish_timeout):
                await client.publish(channel, message)
        except (RedisError, OSError, TimeoutError) as exc:
            raise PublishError(f"publish to {channel!r} failed: {type(exc).__name__}: {exc}") from exc

    async def next_published(self) -> Event:
        # Never raises: broadcaster's own listener task would die with it and strand every subscriber.
        return await self._events.get()

    # -- the listener -------------------------------------------------------------------------

    async def _run_listener(self) -> None:
        """Own the pub/sub connection until cancelled; no exception ends this loop."""
        delay = self._backoff_initial
        while True:
            try:
                if self._conn is None:  # the first session was opened by connect()
                    await self._open_session()
                    await self._run_reconnect_callbacks()
                delay = self._backoff_initial
                await self._listen(self._require_conn())
            except Exception as exc:
                self._record_failure(exc)
            await self._close_conn()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter spreads a fleet's reconnects
            delay = min(delay * 2, self._backoff_max)

    def _require_conn(self) -> AbstractConnection:
        if self._conn is None:
            raise RedisConnectionError("no pub/sub connection")
        return self._conn

    async def _open_session(self) -> None:
        """Connect, subscribe every wanted channel and wait until Redis has confirmed them all."""
        assert self._client is not None
        # A connection of its own, outside the pool, but configured like the publishing client.
        # (redis-py leaves make_connection and connect unannotated, hence the ignores.)
        conn: AbstractConnection = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._conn = conn  # set first so _close_conn can clean up a half-open connection
        await conn.connect()  # type: ignore[no-untyped-call]
        async with self._write_lock:
            # Snapshot and hand-over happen under the lock, so a concurrent subscribe() either is in
            # the snapshot or finds _ready_conn set and sends its own SUBSCRIBE (a duplicate is harmless).
            channels = set(self._channels)
            if channels:
                await conn.send_command("SUBSCRIBE", *sorted(channels))
            self._ready_conn = conn
        await self._await_confirmations(conn, set(channels))
        if self._last_error is not None:
            logger.info("Redis pub/sub listener reconnected; %d channel(s) re-subscribed", len(channels))
        self._alive = True
        self._last_error = None
        self._last_down_log = float("-inf")

    async def _await_confirmations(self, conn: AbstractConnection, pending: set[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._socket_timeout
        while pending:
            remaining = deadline - loop.time()
            response = await conn.read_response(timeout=remaining) if remaining > 0 else None
            if response is None:
                raise RedisTimeoutError(f"SUBSCRIBE not confirmed within {self._socket_timeout}s")
            confirmed = self._handle(response)
            if confirmed is not None:
                pending.discard(confirmed)

    async def _listen(self, conn: AbstractConnection) -> None:
        while True:
            response = await conn.read_response(timeout=self._ping_interval)
            if response is None:
                response = await self._ping(conn)
            self._handle(response)

    async def _ping(self, conn: AbstractConnection) -> Any:
        """Probe an idle connection: a dead peer that sent no FIN would otherwise look idle forever."""
        async with self._write_lock:
            if not conn.is_connected:  # redis-py would silently reconnect it behind our back
                raise RedisConnectionError("pub/sub connection closed")
            await conn.send_command("PING")
        response = await conn.read_response(timeout=self._socket_timeout)
        if response is None:
            raise RedisTimeoutError(f"no reply to PING within {self._socket_timeout}s")
        return response  # PONG or a message that got there first: either proves the link

    def _handle(self, response: Any) -> str | None:
        """Route one pub/sub reply; returns the channel when it is a SUBSCRIBE confirmation."""
        # RESP2 pub/sub replies are [kind, channel, payload]; PING outside subscribed mode is b"PONG".
        if not isinstance(response, list) or len(response) != 3:
            return None
        kind, channel = _text(response[0]).lower(), _text(response[1])
        if kind == "message":
            # Late messages for a channel we just left are dropped, as Redis would have done.
            if channel in self._channels:
                self._events.put_nowait(Event(channel=channel, message=_text(response[2])))
        elif kind == "subscribe":
            self._resolve_waiters(channel, True)
            return channel
        return None

    async def _run_reconnect_callbacks(self) -> None:
        for callback in list(self._callbacks):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("reconnect callback %r failed", callback)

    def _record_failure(self, exc: Exception) -> None:
        was_alive = self._alive
        self._alive = False
        self._ready_conn = None
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._resolve_all_waiters(False)
        if not isinstance(exc, _CONNECTION_ERRORS):
            logger.error("Redis pub/sub listener failed unexpectedly; reconnecting", exc_info=exc)
            return
        now = asyncio.get_running_loop().time()
        if was_alive:
            logger.error("Redis pub/sub connection lost (%s); reconnecting", self._last_error)
        elif now - self._last_down_log >= _DOWN_LOG_INTERVAL:
            logger.warning("Redis pub/sub still unreachable (%s); retrying", self._last_error)
        else:
            logger.debug("Redis pub/sub reconnect attempt failed: %s", self._last_error)
            return
        self._last_down_log = now

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self._ready_conn = None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect(nowait=True)

    # -- SUBSCRIBE confirmations ----------------------------------------------------------------

    async def _send_subscribe(self, channel: str) -> bool:
        """Send SUBSCRIBE and wait for Redis to confirm it; False if that is not possible now."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            async with self._write_lock:
                conn = self._ready_conn
                if conn is None or not conn.is_connected:
                    return False
                await conn.send_command("SUBSCRIBE", channel)
            async with asyncio.timeout(self._socket_timeout):
                return await waiter
        except _CONNECTION_ERRORS:
            return False
        finally:
            self._discard_waiter(channel, waiter)

    def _discard_waiter(self, channel: str, waiter: asyncio.Future[bool]) -> None:
        waiters = self._waiters.get(channel, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(channel, None)

    def _resolve_waiters(self, channel: str, confirmed: bool) -> None:
        for waiter in self._waiters.pop(channel, []):
            if not waiter.done():
                waiter.set_result(confirmed)

    def _resolve_all_waiters(self, confirmed: bool) -> None:
        for channel in list(self._waiters):
            self._resolve_waiters(channel, confirmed)


def _text(value: Any) -> str:
    # errors="replace": one undecodable payload must not become an error that loops the listener.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
