"""The lean subscription path (app/realtime/lean.py) answers exactly as Strawberry's path.

One server in this process (so the test can reach its hub), two graphql-transport-ws connections: one
subscribes while the lean path is on, the other while it is off, with the same messages; both then
live through the same history (changes, repeated and older versions, a version that changes nothing
visible, a resync after lost messages, `complete`, errors). Every operation's frames must be equal,
byte for byte, on both connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from app.main import create_app
from app.realtime import lean
from app.realtime.changes import Change, encode_changes
from app.realtime.hub import Hub
from app.realtime.mailbox import Mailbox
from app.security.scopes import Scope
from app.serving import uvicorn_options
from app.settings import Settings
from tests.conftest import create_test_key
from tests.subscribers import AVAILABILITY_SUB, LEVELS_SUB, TRANSPORT_WS, Http, http_client, unique

pytestmark = pytest.mark.slow

MAX_CODES = 5
SMALL = "skuCode available version"


@dataclass
class Served:
    url: str
    key: str
    storefront_key: str  # no stock-level scope
    hub: Hub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("STOCKWIRE_MAX_CODES_PER_SUBSCRIPTION", str(MAX_CODES))
    url = new_database()
    key = await create_test_key(url)
    storefront = await create_test_key(url, frozenset({Scope.STOREFRONT}))
    settings = Settings(database_url=url, broadcast_url="memory://")
    app = create_app(settings)
    options = uvicorn_options(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=_free_port(),
        log_level="warning",
        http=options["http"],
        ws=options["ws"],
        ws_max_size=options["ws_max_size"],
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(3000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield Served(f"127.0.0.1:{config.port}", key, storefront, app.state.runtime.hub)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        lean.ENABLED = True


class Socket:
    """One graphql-transport-ws connection, recording every frame per operation id as received."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: dict[str, list[str]] = defaultdict(list)
        self.count = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, served: Served, key: str) -> Socket:
        ws = await connect(f"ws://{served.url}/graphql", subprotocols=[TRANSPORT_WS])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {key}"}}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.ws:
                assert isinstance(text, str)
                message = json.loads(text)
                if message["type"] in ("ping", "pong"):
                    continue
                self.frames[message["id"]].append(text)
                self.count += 1

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None) -> None:
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        await self.ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))

    async def complete(self, op_id: str) -> None:
        await self.ws.send(json.dumps({"id": op_id, "type": "complete"}))

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def _settled(*sockets: Socket) -> None:
    """Until no socket received anything for 0.3 s."""
    last = [-1] * len(sockets)
    for _ in range(100):
        await asyncio.sleep(0.3)
        now = [s.count for s in sockets]
        if now == last:
            return
        last = now
    raise AssertionError("frames kept coming")


def _lean_mailboxes(hub: Hub) -> int:
    return sum(1 for m in hub._mailboxes if isinstance(m, Mailbox) and m.on_wake is not None)


async def test_lean_and_strawberry_paths_send_the_same_frames(served: Served) -> None:
    skus = [unique("LEAN-SKU") for _ in range(3)]
    loc = unique("LEAN-WH")
    async with http_client(f"http://{served.url}", served.key) as client:
        http = Http(client)
        await http.catalogue(skus, [loc])
        for sku in skus:
            await http.event("RECEIVED", sku, loc, 10)

        operations: list[tuple[str, str, dict[str, Any] | None]] = [
            ("one", AVAILABILITY_SUB, {"skus": [skus[0]]}),
            ("two-and-unknown", AVAILABILITY_SUB, {"skus": [skus[1], skus[2], "NO-SUCH-SKU"]}),
            ("all", AVAILABILITY_SUB, None),  # every SKU: changes only
            ("levels", LEVELS_SUB, {"skus": skus, "locs": [loc]}),
            (
                "literal",
                f'subscription {{ availabilityChanged(skuCodes: ["{skus[2]}"]) {{ skuCode available version }} }}',
                None,
            ),
            ("unknown-channel", AVAILABILITY_SUB, {"skus": [skus[0]], "channel": "NO-SUCH-CHANNEL"}),
            ("too-many-codes", AVAILABILITY_SUB, {"skus": [f"X{i}" for i in range(MAX_CODES + 1)]}),
            ("bad-variables", AVAILABILITY_SUB, {"skus": 7}),
        ]
        # the documents become known on Strawberry's path (app/graphql/known_documents.py)
        primer = await Socket.open(served, served.key)
        for op_id, query, variables in operations:
            await primer.subscribe(op_id, query, variables)
        await _settled(primer)
        await primer.close()

        lean.ENABLED = True
        fast = await Socket.open(served, served.key)
        for op_id, query, variables in operations:
            await fast.subscribe(op_id, query, variables)
        await _settled(fast)
        lean.ENABLED = False
        slow = await Socket.open(served, served.key)
        for op_id, query, variables in operations:
            await slow.subscribe(op_id, query, variables)
        await _settled(fast, slow)
        lean.ENABLED = True
        assert _lean_mailboxes(served.hub) == 5  # the five valid operations of `fast`, none of `slow`

        # the key without the stock-level scope: refused on both paths alike
        refused_fast = await Socket.open(served, served.storefront_key)
        await refused_fast.subscribe("levels", LEVELS_SUB, {"skus": skus, "locs": [loc]})
        lean.ENABLED = False
        refused_slow = await Socket.open(served, served.storefront_key)
        await refused_slow.subscribe("levels", LEVELS_SUB, {"skus": skus, "locs": [loc]})
        lean.ENABLED = True
        await _settled(refused_fast, refused_slow)
        assert refused_fast.frames == refused_slow.frames
        assert refused_fast.frames["levels"] and '"error"' in refused_fast.frames["levels"][0]

        # changes
        seen: list[Change] = []
        served.hub.observe(seen.extend)
        await http.event("RECEIVED", skus[0], loc, 5)
        await http.event("SHIPPED", skus[1], loc, 2)
        await _settled(fast, slow)

        # repeated, older and unchanged versions are dropped on both paths
        change = next(c for c in reversed(seen) if c.key == skus[0])
        for version in (change.version, change.version - 1, change.version + 1):
            served.hub.dispatch(encode_changes([Change(change.kind, change.key, version, change.data)]))
        await _settled(fast, slow)

        # lost messages, then a resync re-reads the truth
        dispatch = served.hub.dispatch
        served.hub.dispatch = lambda message: 0  # type: ignore[method-assign]
        await http.event("RECEIVED", skus[2], loc, 7)
        await asyncio.sleep(0.5)
        served.hub.dispatch = dispatch  # type: ignore[method-assign]
        served.hub.request_resync()
        await _settled(fast, slow)

        # complete stops an operation at once; the others go on
        await fast.complete("one")
        await slow.complete("one")
        await asyncio.sleep(0.2)
        await http.event("RECEIVED", skus[0], loc, 1)
        await http.event("RECEIVED", skus[2], loc, 1)
        await _settled(fast, slow)

        await fast.close()
        await slow.close()
        await refused_fast.close()
        await refused_slow.close()

    assert set(fast.frames) == set(slow.frames)
    for op_id in fast.frames:
        assert fast.frames[op_id] == slow.frames[op_id], op_id
    # the history reached the subscribers: snapshot, changes, the resync
    assert len(fast.frames["one"]) == 2  # the snapshot and one change (the rest after complete)
    assert len(fast.frames["literal"]) >= 3
    assert '"error"' in fast.frames["too-many-codes"][0]
    assert served.hub.sizes()["mailboxes"] == 0  # every subscriber gave its mailbox back


async def test_a_websocket_connection_leaves_no_cyclic_garbage(served: Served) -> None:
    """Opening a connection and subscribing leaves nothing for the cyclic collector: the server runs it
    rarely (app/main.py `_tune_gc`), so whatever waits for it is memory per idle subscriber until then
    (the HTTP protocol that handled the upgrade did: its httptools parser keeps bound methods of it)."""
    sku, loc = unique("GC-SKU"), unique("GC-WH")
    async with http_client(f"http://{served.url}", served.key) as client:
        http = Http(client)
        await http.catalogue([sku], [loc])
        await http.event("RECEIVED", sku, loc, 10)
    primer = await Socket.open(served, served.key)  # the document becomes known; first-use costs paid
    await primer.subscribe("x", AVAILABILITY_SUB, {"skus": [sku]})
    await _settled(primer)
    sockets: list[Socket] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage instead of being freed
    try:
        for _ in range(30):
            sockets.append(await Socket.open(served, served.key))
            await sockets[-1].subscribe("x", AVAILABILITY_SUB, {"skus": [sku]})
        await _settled(*sockets)
        gc.collect()
        found = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert all(len(s.frames["x"]) == 1 for s in sockets)  # each got its initial state
    assert _lean_mailboxes(served.hub) == 30
    assert sum(found.values()) == 0, found.most_common(10)
    for s in [primer, *sockets]:
        await s.close()


async def test_one_failing_lean_subscription_does_not_hold_back_the_others_on_its_connection() -> None:
    from types import SimpleNamespace

    from app.realtime.ws import PingingTransportWSHandler

    sent: list[str] = []

    class Operation:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails, self.queued = name, fails, True

        async def pump(self) -> None:
            if self.fails:
                raise ValueError("a rendering fault")
            sent.append(self.name)

    queued = [Operation("a", False), Operation("b", True), Operation("c", False)]
    handler = SimpleNamespace(_ready=list(queued), _drainer=None)
    await PingingTransportWSHandler._drain(handler)  # type: ignore[arg-type]
    assert sent == ["a", "c"]  # "c" still sent after "b" failed
    assert [op.queued for op in queued] == [False, False, False] and handler._ready is None
