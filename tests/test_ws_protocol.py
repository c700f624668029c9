"""app/realtime/ws_protocol.py: uvicorn's websockets protocol, slimmed (issue 15: memory per idle
subscriber, fan-out). A real uvicorn server in this process with a small ASGI app, a real websockets
client: what a client sees (extensions, order, close codes, the frame cap) and what a connection
keeps on the server once it is open."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from app.realtime.ws_protocol import (
    _UVICORN_ATTRIBUTES,
    FrameWriter,
    StockwireWSProtocol,
    _ping_wheel,
    _Writable,
)

MAX_SIZE = 4096
BURST = 300

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Accepts, then answers each text message: `burst` sends BURST numbered frames in one loop
    turn, `close:<code>` closes with that code, anything else is echoed."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message["text"]
        if text == "burst":
            for i in range(BURST):
                await send({"type": "websocket.send", "text": str(i)})
        elif text.startswith("close:"):
            await send({"type": "websocket.close", "code": int(text[6:]), "reason": "asked to"})
            return
        else:
            await send({"type": "websocket.send", "text": text})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _serving(**options: Any) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=_free_port(),
        log_level="warning",
        lifespan="off",
        ws=StockwireWSProtocol,
        ws_max_size=MAX_SIZE,
        **{"ws_ping_interval": None, **options},
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    try:
        for _ in range(1000):  # uvicorn has no event for "started"
            if running.started:
                break
            await asyncio.sleep(0.01)
        yield running
    finally:
        running.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def server() -> AsyncIterator[uvicorn.Server]:
    async with _serving() as running:
        yield running


def _url(server: uvicorn.Server) -> str:
    return f"ws://127.0.0.1:{server.config.port}/"


def _protocols(server: uvicorn.Server) -> list[StockwireWSProtocol]:
    return [c for c in server.server_state.connections if isinstance(c, StockwireWSProtocol)]


async def test_permessage_deflate_is_declined(server: uvicorn.Server) -> None:
    async with connect(_url(server)) as ws:  # the client offers permessage-deflate by default
        assert ws.request is not None
        assert "permessage-deflate" in (ws.request.headers.get("Sec-WebSocket-Extensions") or "")
        assert ws.response is not None and ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert ws.protocol.extensions == []
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def test_frames_of_a_burst_arrive_complete_and_in_order(server: uvicorn.Server) -> None:
    async with connect(_url(server)) as ws:
        await ws.send("burst")
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(BURST)]
        assert got == [str(i) for i in range(BURST)]
        await ws.send("after")  # the connection goes on normally after a batched turn
        assert await ws.recv() == "after"


async def test_messages_are_received_in_order(server: uvicorn.Server) -> None:
    async with connect(_url(server)) as ws:
        for i in range(50):
            await ws.send(f"m{i}")
        assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(50)] == [f"m{i}" for i in range(50)]


async def test_close_code_and_reason_reach_the_client(server: uvicorn.Server) -> None:
    async with connect(_url(server)) as ws:
        await ws.send("burst")
        await ws.send("close:4403")
        got = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 5))
        # every frame written before the close frame arrives before it
        assert got == [str(i) for i in range(BURST)]
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4403, "asked to")


async def test_a_frame_over_the_cap_closes_with_1009(server: uvicorn.Server) -> None:
    async with connect(_url(server)) as ws:
        await ws.send("x" * (MAX_SIZE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert closed.value.rcvd.reason == f"frame with {MAX_SIZE + 1} bytes exceeds limit of {MAX_SIZE} bytes"


async def test_an_open_connection_keeps_no_handshake_objects_and_no_instance_dict(server: uvicorn.Server) -> None:
    async with connect(_url(server)) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        (protocol,) = _protocols(server)
        assert not hasattr(protocol, "request") and not hasattr(protocol, "response")
        # the parser's generator frame no longer holds the handshake request
        frame = protocol.conn.parser.gi_frame
        assert frame is not None and not any(isinstance(v, Request) for v in frame.f_locals.values())
        # every attribute uvicorn sets is in a slot: nothing in a per-connection dict
        assert vars(protocol) == {}
        assert isinstance(protocol.transport, FrameWriter)
        # frames still parse after the parser was restarted
        await ws.send("again")
        assert await ws.recv() == "again"


def test_every_uvicorn_attribute_has_a_slot() -> None:
    assert set(_UVICORN_ATTRIBUTES) <= set(StockwireWSProtocol.__slots__)


class _Recorder(asyncio.Transport):
    """A transport that records what is written to it (FrameWriter's only collaborator)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0  # everything written went out


async def test_frame_writer_writes_the_first_frame_at_once_and_batches_the_rest_of_the_turn() -> None:
    transport = _Recorder()
    writer = FrameWriter(transport, asyncio.get_running_loop())
    writer.write(b"a")
    assert transport.writes == [b"a"]  # a lone message waits for nothing
    writer.write(b"b")
    writer.write(b"c")
    assert transport.writes == [b"a"]
    assert writer.get_write_buffer_size() == 2
    await asyncio.sleep(0)  # the end of the turn
    assert transport.writes == [b"a", b"bc"]
    writer.write(b"d")  # a new turn: at once again
    assert transport.writes == [b"a", b"bc", b"d"]
    writer.write(b"e")
    writer.close()  # what is pending goes out before the close
    assert transport.writes == [b"a", b"bc", b"d", b"e"] and transport.closed
    await asyncio.sleep(0)
    assert transport.writes == [b"a", b"bc", b"d", b"e"]


async def test_writable_wakes_every_waiter_and_one_cancelled_waiter_does_not_cancel_the_others() -> None:
    writable = _Writable()
    await asyncio.wait_for(writable.wait(), 1)  # open: no wait
    writable.clear()
    waiters = [asyncio.create_task(writable.wait()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    waiters[0].cancel()
    await asyncio.sleep(0.01)
    assert waiters[0].cancelled() and not waiters[1].done() and not waiters[2].done()
    writable.set()
    await asyncio.wait_for(asyncio.gather(waiters[1], waiters[2]), 1)
    assert writable.is_set()


async def test_keepalive_pings_come_from_one_wheel_and_a_silent_peer_is_closed() -> None:
    async with _serving(ws_ping_interval=0.3, ws_ping_timeout=0.5) as running:
        # a client that answers pings (websockets does, by itself) stays open past several intervals
        async with connect(_url(running)) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            # a client that completes the handshake and then reads nothing never answers a ping
            reader, writer = await asyncio.open_connection("127.0.0.1", running.config.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            await asyncio.sleep(0.05)
            protocols = _protocols(running)
            assert len(protocols) == 2
            assert all(p.ping_timer is None for p in protocols)  # no timer per connection
            assert all(p.ping_slot is not None for p in protocols)
            await asyncio.sleep(1.5)
            # the silent one got a ping and was closed at its pong deadline (1011), the other answered
            received = await asyncio.wait_for(reader.read(), 5)  # up to EOF
            assert b"keepalive ping timeout" in received
            writer.close()
            (alive,) = _protocols(running)
            assert alive.last_ping_rtt > 0
            await ws.send("still here")
            assert await ws.recv() == "still here"
        await asyncio.sleep(0.05)
        assert _protocols(running) == []
        assert len(_ping_wheel(asyncio.get_running_loop(), 0.3)) == 0  # nobody left in the wheel
