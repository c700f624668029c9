"""Hostile websocket and connection input (issue 12, items 2, 3, 4 and 10) against live servers.

The module's main server runs exactly as `stockwire serve` does (app/serving.py: read deadlines,
websocket frame cap), with small limits so each case is quick. Every case checks what came back (a
close code, a typed error), that the database is row-for-row unchanged, and that the server logged
no traceback. A second server, plain uvicorn with its 16 MiB frame cap, shows the application's own
message cap (close 4413). The hub's and the streams' bookkeeping is checked in process: empty once
every subscriber has left, and unknown codes never reach it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from broadcaster import Broadcast
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.db.engine import Database
from app.realtime.config import RealtimeSettings
from app.realtime.hub import Hub
from app.realtime.redis_backend import InMemoryBackend
from app.realtime.streams import Streams
from app.security import keys
from app.security.scopes import Scope
from app.services.context import Ctx
from tests.conftest import Api
from tests.helpers import RECORD, RESERVE, UPSERT_LOCATIONS, UPSERT_SKUS
from tests.live import free_port, make_key
from tests.test_hostile_inputs import _settle, snapshot

pytestmark = pytest.mark.slow  # live server processes

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
TIMEOUT = 15.0
MAX_REQUEST_BYTES = 4096
PER_CONNECTION, PER_KEY, PER_ADDRESS = 3, 4, 5  # subscriptions
CONNECTIONS_PER_KEY, CONNECTIONS_PER_ADDRESS = 2, 4
MAX_CODES = 20
LIMITS = {
    "max_request_bytes": MAX_REQUEST_BYTES,
    "max_subscriptions_per_connection": PER_CONNECTION,
    "max_subscriptions_per_key": PER_KEY,
    "max_subscriptions_per_address": PER_ADDRESS,
    "max_connections_per_key": CONNECTIONS_PER_KEY,
    "max_connections_per_address": CONNECTIONS_PER_ADDRESS,
    "max_codes_per_subscription": MAX_CODES,
    "header_timeout_seconds": 1,
    "body_timeout_seconds": 1,
    "auth_cache_seconds": 3600,  # no key lookup refreshes last_used_at while the cases run
}
SUB = "subscription($s: [String!]) { availabilityChanged(skuCodes: $s) { skuCode available } }"
QUERY = 'query { availability(skuCodes: ["SKU-1"]) { skuCode available } }'


# -- live servers --------------------------------------------------------------------------------


@dataclass
class Live:
    process: subprocess.Popen[bytes]
    port: int
    url: str  # the database
    log: Path
    key: str
    keys: dict[str, str]  # name -> a storefront key of its own (per-key caps)
    _addresses: Iterator[int] = field(default_factory=lambda: iter(range(2, 250)))

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def address(self) -> str:
        """A loopback address of its own (127.0.0.x): the per-address counts of one case are its own."""
        return f"127.0.0.{next(self._addresses)}"

    def tracebacks(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if "Traceback" in line or "Exception in ASGI" in line]


def _start(command: list[str], url: str, key: str, log: Path, **env: Any) -> Live:
    port = free_port()
    environment = {
        **os.environ,
        "STOCKWIRE_DATABASE_URL": url,
        "STOCKWIRE_BROADCAST_URL": "memory://",
        **{f"STOCKWIRE_{k.upper()}": str(v) for k, v in env.items()},
    }
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, "--port", str(port)], env=environment, stdout=sink, stderr=sink)
    live = Live(process, port, url, log, key, {})  # keys: set by the caller
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return live
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop(live)
    raise RuntimeError("server did not become ready in 30 s")


def _stop(live: Live) -> None:
    live.process.terminate()
    try:
        live.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        live.process.kill()
        live.process.wait()


STOCKWIRE_SERVE = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
PLAIN_UVICORN = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--log-level", "warning"]


async def _storefront_keys(url: str, names: list[str]) -> dict[str, str]:
    db = Database(url)
    try:
        return {n: (await keys.create_key(db, n, [Scope.STOREFRONT, Scope.CHECKOUT])).secret for n in names}
    finally:
        await db.dispose()


def _seed(live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", headers=headers, timeout=TIMEOUT) as client:

        def ok(query: str, **variables: Any) -> None:
            body = client.post("/graphql", json={"query": query, "variables": variables}).json()
            assert "errors" not in body, body
            assert all(not v.get("userErrors") for v in body["data"].values()), body

        ok(UPSERT_SKUS, input=[{"code": c, "name": c} for c in ("SKU-1", "SKU-2")])
        ok(UPSERT_LOCATIONS, input=[{"code": "WH-1", "name": "WH-1", "kind": "WAREHOUSE"}])
        event = {
            "source": "erp",
            "externalId": "seed",
            "type": "RECEIVED",
            "skuCode": "SKU-1",
            "locationCode": "WH-1",
            "quantity": 10,
            "occurredAt": "2026-01-01T09:00:00Z",
        }
        ok(RECORD, input=[event])
        for secret in live.keys.values():  # a key's first use stamps last_used_at: not during a case
            used = client.post(
                "/graphql", json={"query": "{ __typename }"}, headers={"Authorization": f"Bearer {secret}"}
            )
            assert used.status_code == 200, used.text


def _serve(tmp: Path, url: str, command: list[str], **env: Any) -> Iterator[Live]:
    key = make_key(url)
    names = [f"k{i}" for i in range(8)]
    extra = asyncio.run(_storefront_keys(url, names))
    live = _start(command, url, key, tmp / "server.log", **env)
    live.keys = extra
    try:
        _seed(live)
        _settle(url)  # the seed's outbox rows are relayed: nothing moves while the cases compare snapshots
        yield live
    finally:
        _stop(live)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str]) -> Iterator[Live]:
    yield from _serve(tmp_path_factory.mktemp("hostile-ws"), new_database(), STOCKWIRE_SERVE, **LIMITS)


@pytest.fixture(scope="module")
def plain_uvicorn(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str]) -> Iterator[Live]:
    yield from _serve(tmp_path_factory.mktemp("hostile-ws-plain"), new_database(), PLAIN_UVICORN, **LIMITS)


# -- websocket helpers ---------------------------------------------------------------------------


async def _open(
    live: Live, protocol: str = TRANSPORT_WS, key: str | None = None, address: str | None = None
) -> ClientConnection:
    local = {"local_addr": (address, 0)} if address else {}
    ws = await connect(live.ws_url, subprotocols=[protocol], open_timeout=TIMEOUT, **local)  # type: ignore[list-item]
    if key is not None:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {key}"}}))
    return ws


async def _acked(
    live: Live, protocol: str = TRANSPORT_WS, key: str | None = None, address: str | None = None
) -> ClientConnection:
    ws = await _open(live, protocol, key or live.key, address)
    assert (await _next(ws))["type"] == "connection_ack"
    return ws


async def _next(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a keepalive."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] not in ("ping", "pong", "ka"):
                return message


async def _closed(ws: ClientConnection) -> tuple[int, str] | str:
    """The close code and reason the server sent, or the first message that came instead."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = json.loads(await ws.recv())
                if message.get("type") not in ("ping", "ka", "connection_ack", "connection_error"):
                    return f"message {message}"
    except ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code, closed.rcvd.reason


def _start_message(protocol: str, op_id: str, query: str, variables: dict[str, Any] | None = None) -> str:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return json.dumps({"type": kind, "id": op_id, "payload": {"query": query, "variables": variables or {}}})


async def _answer(ws: ClientConnection, op_id: str) -> list[dict[str, Any]]:
    """Every message for `op_id` up to its `complete` or `error` (the first data message of a subscription)."""
    got: list[dict[str, Any]] = []
    while True:
        message = await _next(ws)
        if message.get("id") != op_id:
            continue
        got.append(message)
        if message["type"] in ("complete", "error") or not SUB_STARTED.isdisjoint(
            message.get("payload", {}).get("data") or {}
        ):
            return got


SUB_STARTED = {"availabilityChanged"}


def _error_codes(message: dict[str, Any]) -> list[tuple[str, str]]:
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload.get("errors", [payload])
    return [(e["extensions"]["code"], e["extensions"].get("limit", "")) for e in errors]


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Live], Any]
    expect: Any


async def _raw_frame(live: Live, frame: str, protocol: str) -> Any:
    ws = await _acked(live, protocol)
    try:
        await ws.send(frame)
        closed = await _closed(ws)
        return closed[0] if isinstance(closed, tuple) else closed
    finally:
        await ws.close()


async def _legacy_operation(live: Live, query: str, variables: dict[str, Any]) -> list[Any]:
    ws = await _acked(live, LEGACY_WS)
    try:
        await ws.send(_start_message(LEGACY_WS, "1", query, variables))
        return [(m["type"], m.get("payload")) for m in await _answer(ws, "1")]
    finally:
        await ws.close()


def _big_text(protocol: str) -> str:
    """A reserve mutation just over max_request_bytes."""
    variables = {"input": {"lines": [{"skuCode": "SKU-1", "quantity": 1}], "idempotencyKey": "x" * MAX_REQUEST_BYTES}}
    return _start_message(protocol, "1", RESERVE, variables)


def _frame_too_big(protocol: str) -> tuple[int, str]:
    """How `stockwire serve` refuses `_big_text`: the frame's size is read from its header (no
    permessage-deflate, app/realtime/ws_protocol.py), so the reason names it."""
    size = len(_big_text(protocol).encode())
    return 1009, f"frame with {size} bytes exceeds limit of {MAX_REQUEST_BYTES} bytes"


async def _big_message(live: Live, protocol: str) -> Any:
    """A mutation just over max_request_bytes: closed before it is parsed (the sweep shows it never ran)."""
    ws = await _acked(live, protocol)
    try:
        await ws.send(_big_text(protocol))
        return await _closed(ws)
    finally:
        await ws.close()


async def _limit_reached(live: Live, sockets: list[tuple[str, int]], address: str) -> list[tuple[str, str]]:
    """Opens a socket per (key name, subscriptions) and subscribes that many times; then one more on
    the last socket: the codes of its refusal (or of whatever it got)."""
    opened: list[ClientConnection] = []
    try:
        for name, count in sockets:
            ws = await _acked(live, key=live.keys[name], address=address)
            opened.append(ws)
            for i in range(count):
                await ws.send(_start_message(TRANSPORT_WS, f"{name}-{i}", SUB, {"s": ["SKU-1"]}))
                assert (await _answer(ws, f"{name}-{i}"))[-1]["type"] == "next"
        last = opened[-1]
        await last.send(_start_message(TRANSPORT_WS, "one-too-many", SUB, {"s": ["SKU-1"]}))
        (refused,) = await _answer(last, "one-too-many")
        assert refused["type"] == "error", refused
        return _error_codes(refused)
    finally:
        for ws in opened:
            await ws.close()


async def _connections(live: Live, keys: list[str], address: str) -> list[Any]:
    """Opens a socket per key name, all from one address; what each got (ack, or close code and reason)."""
    opened: list[ClientConnection] = []
    got: list[Any] = []
    try:
        for name in keys:
            try:
                ws = await _open(live, key=live.keys[name], address=address)
                opened.append(ws)
                message = await _next(ws)
                got.append(message["type"] if message["type"] == "connection_ack" else message)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                got.append((closed.rcvd.code, closed.rcvd.reason))
        return got
    finally:
        for ws in opened:
            await ws.close()


async def _too_many_codes(live: Live, protocol: str) -> list[tuple[str, str]]:
    ws = await _acked(live, protocol, address=live.address())
    try:
        await ws.send(_start_message(protocol, "1", SUB, {"s": [f"NOPE-{i}" for i in range(MAX_CODES + 1)]}))
        (message,) = [m for m in await _answer(ws, "1") if m["type"] != "complete"]
        return _error_codes(message)
    finally:
        await ws.close()


ACK = "connection_ack"
SUBS_PER_CONNECTION = ("TOO_MANY_SUBSCRIPTIONS", "max_subscriptions_per_connection")
SUBS_PER_KEY = ("TOO_MANY_SUBSCRIPTIONS", "max_subscriptions_per_key")
SUBS_PER_ADDRESS = ("TOO_MANY_SUBSCRIPTIONS", "max_subscriptions_per_address")
RESERVE_UNKNOWN = {"input": {"lines": [{"skuCode": "NOPE", "quantity": 1}], "idempotencyKey": "legacy"}}

CASES = [
    # item 10: frames that are JSON but not an object crashed both handlers (close 1006)
    *[
        Case(f"{protocol}: text frame {frame}", lambda w, f=frame, p=protocol: _raw_frame(w, f, p), 4400)
        for protocol in (TRANSPORT_WS, LEGACY_WS)
        for frame in ("[1,2]", '"x"', "null", "42", '{"type": 7}', '{"type": "start", "id": "1", "payload": "x"}')
    ],
    Case(
        "graphql-transport-ws: subscribe with a payload that is not an object",
        lambda w: _raw_frame(w, '{"type": "subscribe", "id": "1", "payload": [1]}', TRANSPORT_WS),
        4400,
    ),
    Case(
        "graphql-transport-ws: subscribe with a non-string id",
        lambda w: _raw_frame(
            w, json.dumps({"type": "subscribe", "id": [1], "payload": {"query": QUERY}}), TRANSPORT_WS
        ),
        4400,
    ),
    # item 10: legacy graphql-ws runs a query or mutation once, as graphql-transport-ws does
    Case(
        "graphql-ws: a query is answered once, then complete",
        lambda w: _legacy_operation(w, QUERY, {}),
        [("data", {"data": {"availability": [{"skuCode": "SKU-1", "available": 10}]}}), ("complete", None)],
    ),
    Case(
        "graphql-ws: a refused mutation answers its userError, changes nothing",
        lambda w: _legacy_operation(
            w, "mutation($input: ReserveInput!) { reserve(input: $input) { userErrors { code } } }", RESERVE_UNKNOWN
        ),
        [("data", {"data": {"reserve": {"userErrors": [{"code": "UNKNOWN_SKU"}]}}}), ("complete", None)],
    ),
    # item 3: the same cap as an HTTP body; `stockwire serve` caps frames at the protocol (1009)
    *[
        Case(
            f"{p}: a message over max_request_bytes",
            lambda w, p=p: _big_message(w, p),
            _frame_too_big(p),
        )
        for p in (TRANSPORT_WS, LEGACY_WS)
    ],
    # item 2: caps, each a typed refusal
    Case(
        "subscriptions per connection",
        lambda w: _limit_reached(w, [("k0", PER_CONNECTION)], w.address()),
        [SUBS_PER_CONNECTION],
    ),
    Case(
        "subscriptions per key (over two connections)",
        lambda w: _limit_reached(w, [("k1", 2), ("k1", PER_KEY - 2)], w.address()),
        [SUBS_PER_KEY],
    ),
    Case(
        "subscriptions per address (over two keys)",
        lambda w: _limit_reached(w, [("k2", 2), ("k3", 2), ("k3", PER_ADDRESS - 4)], w.address()),
        [SUBS_PER_ADDRESS],
    ),
    *[
        Case(
            f"{p}: codes per subscription",
            lambda w, p=p: _too_many_codes(w, p),
            [("TOO_MANY_CODES", "max_codes_per_subscription")],
        )
        for p in (TRANSPORT_WS, LEGACY_WS)
    ],
    Case(
        "connections per key",
        lambda w: _connections(w, ["k4", "k4", "k4"], w.address()),
        [ACK, ACK, (4429, "TOO_MANY_CONNECTIONS: max_connections_per_key")],
    ),
    Case(
        "connections per address",
        lambda w: _connections(w, ["k5", "k5", "k6", "k6", "k7"], w.address()),
        [ACK, ACK, ACK, ACK, (4429, "TOO_MANY_CONNECTIONS: max_connections_per_address")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_hostile_websocket(server: Live, case: Case) -> None:
    before = await snapshot(server.url)
    got = await case.run(server)
    after = await snapshot(server.url)
    assert got == case.expect
    assert after == before, f"{case.name} changed the database"
    assert server.tracebacks() == []


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_the_app_refuses_a_message_over_max_request_bytes_before_parsing(
    plain_uvicorn: Live, protocol: str
) -> None:
    # plain uvicorn lets 16 MiB frames through: the application's own check answers
    before = await snapshot(plain_uvicorn.url)
    assert await _big_message(plain_uvicorn, protocol) == (
        4413,
        f"PAYLOAD_TOO_LARGE: a message is at most {MAX_REQUEST_BYTES} bytes",
    )
    assert await snapshot(plain_uvicorn.url) == before
    # one byte under the cap is read (and refused for what it says, not for its size)
    ws = await _acked(plain_uvicorn, protocol)
    try:
        pad = MAX_REQUEST_BYTES - len(_start_message(protocol, "1", QUERY, {"pad": ""})) - 1
        await ws.send(_start_message(protocol, "1", QUERY, {"pad": "p" * pad}))
        assert (await _answer(ws, "1"))[0]["type"] in ("next", "data")
    finally:
        await ws.close()
    assert plain_uvicorn.tracebacks() == []


async def test_caps_are_given_back_when_clients_leave(server: Live) -> None:
    address = server.address()
    for _ in range(3):  # three rounds at the caps: each round's sockets and operations were released
        assert await _connections(server, ["k0", "k0"], address) == [ACK, ACK]
        assert await _limit_reached(server, [("k0", PER_CONNECTION)], address) == [SUBS_PER_CONNECTION]
        await asyncio.sleep(0.3)  # the server ends the closed sockets' handlers


# -- item 4: read deadlines ----------------------------------------------------------------------


def _raw(live: Live, first: bytes) -> tuple[bytes, float]:
    """Sends `first`, then nothing: what the server answered before closing, and after how long."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", live.port), timeout=TIMEOUT) as sock:
        sock.sendall(first.replace(b"KEY", live.key.encode()))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/js", id="half a header"),
        pytest.param(b"", id="nothing at all"),
        pytest.param(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query":',
            id="a body that stops",
        ),
    ],
)
def test_a_slow_request_is_answered_408_and_closed(server: Live, first: bytes) -> None:
    answer, elapsed = _raw(server, first)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"REQUEST_TIMEOUT"' in answer
    assert 0.9 <= elapsed < 5, elapsed
    assert server.tracebacks() == []


def test_a_trickled_body_is_cut_off_at_its_deadline(server: Live) -> None:
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock:
        sock.sendall(head)
        while time.monotonic() - started < 5:
            try:
                sock.sendall(b" ")  # a byte every 0.2 s: never idle, never done
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 3
    assert server.tracebacks() == []


def test_deadlines_spare_prompt_requests_and_open_websockets(server: Live) -> None:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}", headers={"Authorization": f"Bearer {server.key}"}
    ) as client:
        for _ in range(2):  # a keep-alive connection used twice, over the header deadline apart
            answer = client.post("/graphql", json={"query": QUERY})
            assert answer.status_code == 200, answer.text
            time.sleep(1.2)

    async def idle_websocket() -> str:
        ws = await _acked(server)
        try:
            await asyncio.sleep(2.5)  # past both deadlines
            await ws.send(json.dumps({"type": "ping"}))
            async with asyncio.timeout(TIMEOUT):
                while (message := json.loads(await ws.recv()))["type"] == "ping":
                    pass  # the server's keepalive
            return str(message["type"])
        finally:
            await ws.close()

    assert asyncio.run(idle_websocket()) == "pong"


# -- item 2: what stays in the process -----------------------------------------------------------


@pytest.fixture
async def streams(api: Api) -> AsyncIterator[Streams]:
    async with Broadcast(backend=InMemoryBackend("memory://")) as broadcast:
        hub = Hub(broadcast)
        await hub.start()
        try:
            yield Streams(
                Ctx(db=api.ctx.db, settings=api.ctx.settings), hub, RealtimeSettings(max_codes_per_subscription=1000)
            )
        finally:
            await hub.stop()


async def test_unknown_codes_allocate_nothing_and_everything_goes_when_subscribers_leave(
    api: Api, streams: Streams
) -> None:
    await api.ok(UPSERT_SKUS, input=[{"code": "KNOWN-1", "name": "k"}, {"code": "KNOWN-2", "name": "k"}])
    await api.ok(UPSERT_LOCATIONS, input=[{"code": "WH-K", "name": "w", "kind": "WAREHOUSE"}])
    hub = streams.hub
    unknown = [f"NOPE-{i}" for i in range(999)]
    seen: list[str] = []

    async def consume(stream: AsyncIterator[Any]) -> None:
        async for view in stream:
            seen.append(view.sku_code)

    subscribers = [
        asyncio.create_task(consume(stream))
        for _ in range(20)
        for stream in (
            streams.availability([*unknown, "KNOWN-1"], channel_code=None),
            streams.stock_levels([*unknown, "KNOWN-2"], [*unknown[:10], "WH-K"]),
        )
    ]
    async with asyncio.timeout(TIMEOUT):
        while len(seen) < 20:  # noqa: ASYNC110 - every availability subscriber has its snapshot: reads done
            await asyncio.sleep(0.05)
        # the stock-level subscribers look their codes up before subscribing: wait for them too (a
        # fixed 0.2 s was too short on a busy machine)
        while hub.sizes()["mailboxes"] < 40:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    # 40 subscribers of 1,000+ codes each: one index entry per code that exists, not 40,000
    assert hub.sizes() == {"mailboxes": 40, "keys": 2, "wildcard_kinds": 0}  # KNOWN-1, KNOWN-2 @ WH-K
    assert streams.sizes() == {"decoders": 2, "snapshot_batchers": 0}
    # an unknown channel's subscription ends with its error and leaves nothing behind
    with pytest.raises(ValueError, match="NO-SUCH"):
        await consume(streams.availability(["KNOWN-1"], channel_code="NO-SUCH"))
    for task in subscribers:
        task.cancel()
    await asyncio.gather(*subscribers, return_exceptions=True)
    assert hub.sizes() == {"mailboxes": 0, "keys": 0, "wildcard_kinds": 0}
    assert streams.sizes() == {"decoders": 0, "snapshot_batchers": 0}


async def test_admission_counts_go_back_to_nothing() -> None:
    from app.realtime.limits import Admission, LimitExceeded

    admission = Admission(RealtimeSettings(max_connections_per_address=2, max_subscriptions_per_key=3))
    tickets = [admission.connection("10.0.0.1"), admission.connection("10.0.0.1"), admission.connection_of_key("k")]
    with pytest.raises(LimitExceeded) as refused:
        admission.connection("10.0.0.1")
    assert (refused.value.code, refused.value.setting) == ("TOO_MANY_CONNECTIONS", "max_connections_per_address")
    tickets += [admission.operation("10.0.0.1", "k", i) for i in range(3)]
    with pytest.raises(LimitExceeded) as refused:
        admission.operation("10.0.0.2", "k", 0)
    assert refused.value.setting == "max_subscriptions_per_key"
    for ticket in tickets:
        ticket.release()
        ticket.release()  # twice is harmless
    assert set(admission.sizes().values()) == {0}
