"""uvicorn's websockets (sans-I/O) protocol, slimmed for many idle subscribers and fast fan-out.

Issue 15 asks for 10,000 idle subscribers on one process at <= 30 KB each, and one change delivered
to 1,000 subscribers within 50 ms. uvicorn's `WebSocketsSansIOProtocol` spends memory on every
connection that an idle subscriber never uses, and writes every frame with its own `send()`:

* **permessage-deflate is declined.** Accepting it gives each connection a zlib compressor and
  decompressor (tens of KB with uvicorn's settings) to save a few bytes on messages of about 100.
* **No asyncio.Queue or asyncio.Event per connection.** The ASGI receive queue becomes `_Inbox` (a
  list, and a future only while the application waits) and the flow-control event `_Writable` (a
  future only while the peer is slow to read).
* **The handshake's request and response are dropped** once the handshake is done (uvicorn keeps
  both, with their parsed headers, for the life of the connection; the ASGI scope has the headers).
* **Attributes live in slots**, not in a per-instance dict: uvicorn's protocol sets about 37, more
  than CPython's shared-key dicts hold, so each connection had a dict of its own (~2 KB).
* **`FrameWriter` batches writes per event-loop turn.** The first frame of a turn goes to the socket
  at once (a lone message waits for nothing); frames that follow in the same turn (the other
  subscriptions of that connection answering the same change) are joined into one `transport.write`
  at the end of the turn: one send() system call for 100 subscriptions instead of 100.

* **Keepalive pings come from one timer** per process (`_PingWheel`), not a timer per connection.

It relies on how uvicorn's protocol is built (its attribute names, `schedule_ping`, `handle_connect`),
checked against uvicorn 0.55.0 and websockets 17.4: tests/test_ws_protocol.py fails if an upgrade moves
them (an attribute outside the slots, a parser that still holds the request, a timer per connection).

Everything else (the keepalive ping and pong themselves, the close handshake, the 1009 close for
frames over `ws_max_size`) is uvicorn's own code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request
from websockets.protocol import Protocol

# uvicorn's ASGI message types live in its private `uvicorn._types` (app/compat.py rule): plain dicts here
ASGIReceiveEvent = Any
ASGISendEvent = Any


class _Inbox:
    """The ASGI receive queue of one connection: `put_nowait`, `empty` and `get` of asyncio.Queue.

    One reader (the application's `receive`); at most a few events pending (uvicorn pauses reading
    after each message until the application takes it).
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._items.pop(0)


class _Writable:
    """Flow control (`set`, `clear`, `is_set`, `wait` of asyncio.Event) without an Event per connection.

    Many tasks may wait at once (every subscription of a connection sends on its own), so they share
    one future, each behind a shield: one waiter's cancellation must not cancel the others' wait.
    """

    __slots__ = ("_open", "_waiter")

    def __init__(self) -> None:
        self._open = True
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> None:
        while not self._open:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)


class FrameWriter(asyncio.Transport):
    """The connection's transport, writing the frames of one event-loop turn in one `write`.

    Every write of the protocol goes through here (frames, pings, the close frame), so order is kept;
    `close()` writes what is pending first.
    """

    __slots__ = ("_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None  # not None: a turn is open; its frames wait here

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if self._pending is not None:
            self._pending.append(bytes(data))
            return
        self.transport.write(data)
        self._pending = []
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._pending = None
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(len(frame) for frame in self._pending or ())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def can_write_eof(self) -> bool:
        return False


_TICK = 0.25  # seconds between two rounds of the ping wheel


class _PingWheel:
    """uvicorn's websocket-level keepalive pings for every connection of a loop, from one timer.

    uvicorn schedules a `call_later` per connection for its next ping (a TimerHandle with its bound
    method, ~0.5 KB for every idle subscriber, and a heap of 10,000 timers). Here the interval is
    cut into slots of `_TICK` seconds; a connection waits in the slot that comes round one interval
    after it was added (so pings stay spread as connections arrived), and each tick sends one slot's
    pings with uvicorn's own `send_keepalive_ping` (its pong deadline stays uvicorn's timer: it
    exists only between a ping and its pong).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._slots: list[dict[int, StockwireWSProtocol]] = [{} for _ in range(max(1, round(interval / _TICK)))]
        self._tick_seconds = interval / len(self._slots)
        self._at = 0  # the slot the next tick serves
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, protocol: StockwireWSProtocol) -> None:
        self.remove(protocol)
        slot = (self._at - 1) % len(self._slots)  # the last to come round: about one interval from now
        self._slots[slot][id(protocol)] = protocol
        protocol.ping_slot = slot
        self._count += 1
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick_seconds, self._tick)

    def remove(self, protocol: StockwireWSProtocol) -> None:
        slot, protocol.ping_slot = protocol.ping_slot, None
        if slot is not None and self._slots[slot].pop(id(protocol), None) is not None:
            self._count -= 1

    def _tick(self) -> None:
        self._timer = None
        due, self._slots[self._at] = self._slots[self._at], {}
        self._at = (self._at + 1) % len(self._slots)
        self._count -= len(due)
        for protocol in due.values():
            protocol.ping_slot = None
            try:
                protocol.send_keepalive_ping()
            except Exception:  # one broken connection must not stop the others' pings
                protocol.logger.exception("websocket keepalive ping failed")
        if self._count and self._timer is None:
            self._timer = self._loop.call_later(self._tick_seconds, self._tick)


_wheels: dict[tuple[asyncio.AbstractEventLoop, float], _PingWheel] = {}  # per loop and interval


def _ping_wheel(loop: asyncio.AbstractEventLoop, interval: float) -> _PingWheel:
    wheel = _wheels.get((loop, interval))
    if wheel is None:
        for key in [k for k in _wheels if k[0].is_closed()]:  # a test's loop, since closed
            del _wheels[key]
        wheel = _wheels[(loop, interval)] = _PingWheel(loop, interval)
    return wheel


# Every attribute uvicorn's protocol sets (its __init__, connection_made, handle_connect), kept in
# slots: checked by tests/test_ws_protocol.py, which fails if a uvicorn upgrade adds one.
_UVICORN_ATTRIBUTES = (
    "app",
    "app_state",
    "asgi_version",
    "client",
    "close_sent",
    "close_timeout",
    "close_timer",
    "config",
    "conn",
    "connections",
    "curr_msg_data_type",
    "default_headers",
    "disconnected",
    "frames",
    "handshake_complete",
    "handshake_initiated",
    "initial_response",
    "last_ping_rtt",
    "logger",
    "loop",
    "pending_ping_payload",
    "ping_interval",
    "ping_sent_at",
    "ping_timeout",
    "ping_timer",
    "pong_timer",
    "queue",
    "read_paused",
    "request",
    "response",
    "root_path",
    "scheme",
    "scope",
    "server",
    "tasks",
    "transport",
    "writable",
)


class StockwireWSProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol without per-connection costs an idle subscriber does not need."""

    __slots__ = (*_UVICORN_ATTRIBUTES, "ping_slot")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn.available_extensions = []  # decline permessage-deflate (module docstring)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]
        self.ping_slot: int | None = None  # where this connection waits in the ping wheel

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None
        _ping_wheel(self.loop, self.ping_interval).add(self)

    def stop_keepalive(self) -> None:
        super().stop_keepalive()
        if self.ping_slot is not None and self.ping_interval is not None:
            _ping_wheel(self.loop, self.ping_interval).remove(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = FrameWriter(self.transport, self.loop)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        conn = self.conn
        if conn.parser_exc is None and not conn.reader.buffer and self.response.status_code == 101:
            # websockets' parser is one generator for the whole connection, and its frame holds the
            # handshake request (with its parsed headers, ~2 KB) as a local for as long as the
            # connection lives. Past the handshake it only parses frames: start that part afresh.
            # Only with nothing buffered (a client sends no frame before the 101 answer), so no
            # partly read frame is lost.
            conn.parser = Protocol.parse(conn)
            next(conn.parser)

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # accepted (or refused): the handshake's request and response are needed no more
            del self.request, self.response
