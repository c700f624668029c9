"""clients/stockwire_client against a live server on a fresh PostgreSQL database.

The client talks through a TCP proxy the test controls, so a connection can be cut abruptly (what a
network failure looks like), an answer can be lost after the server served the request, and the client
can be pointed at a restarted server without being told anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from clients.stockwire_client import (
    Availability,
    LiveOptions,
    Order,
    ReserveLine,
    Retry,
    SnapshotComplete,
    StockwireClient,
    StockwireError,
    SubscriptionError,
)
from clients.stockwire_client.operations import OPERATIONS
from clients.testing.proxy import Proxy
from tests.live import Server, start_server, stop_server
from tests.subscribers import TIMEOUT, Http, http_client, unique

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # live server processes on PostgreSQL

FAST = LiveOptions(min_backoff=0.05, max_backoff=0.3)
DENVER = (39.7392, -104.9903)


@pytest.fixture
def server(client_database: dict[str, Any]) -> Iterator[Server]:
    live = start_server(client_database["url"], key=client_database["keys"]["all"])
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[Proxy]:
    p = await Proxy(server.port).start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def http(server: Server) -> AsyncIterator[Http]:
    async with http_client(server.url, server.key) as client:
        yield Http(client)


class Collector:
    """Runs `watch_availability` in the background and keeps what it yields."""

    def __init__(self, watch: Any) -> None:
        self.watch = watch
        self.events: list[Availability | SnapshotComplete] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def states(self) -> list[Availability]:
        return [e for e in self.events if isinstance(e, Availability)]

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        try:
            async for event in self.watch:
                self.events.append(event)
                self._changed.set()
        except Exception as exc:
            self.error = exc
            self._changed.set()

    async def wait_until(self, condition: Callable[[Collector], bool], what: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition(self):
                    if self.error is not None:
                        pytest.fail(f"the client failed while waiting for {what}: {self.error!r}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}; the client yielded {self.events}")


def _shows(value: int) -> Callable[[Collector], bool]:
    return lambda c: bool(c.states) and c.states[-1].available == value


async def test_watch_availability_survives_a_cut_and_a_server_restart(
    client_database: dict[str, Any], server: Server, proxy: Proxy, http: Http
) -> None:
    sku, wh = unique("SKU"), unique("WH")
    await http.catalogue([sku], [wh])
    await http.event("RECEIVED", sku, wh, 5)
    storefront = StockwireClient(proxy.url, api_key=client_database["keys"]["storefront"], live=FAST)
    watch = storefront.watch_availability([sku])
    async with Collector(watch) as seen:
        await seen.wait_until(lambda c: SnapshotComplete(resync=False) in c.events, "the snapshot")
        assert [s.available for s in seen.states] == [5]
        await http.event("RECEIVED", sku, wh, 1)
        await seen.wait_until(_shows(6), "a change")

        # the connection is cut and nothing changes meanwhile: the re-sent state is not yielded again
        proxy.linked.clear()
        proxy.cut()
        await asyncio.wait_for(proxy.linked.wait(), TIMEOUT)
        await seen.wait_until(lambda c: SnapshotComplete(resync=True) in c.events, "the resync")
        await http.event("RECEIVED", sku, wh, 1)
        await seen.wait_until(_shows(7), "a change after the cut")

        # the server goes away; its successor on the same database changes the stock while the client
        # cannot reach it; then the successor becomes reachable at the client's address
        proxy.upstream = None
        proxy.cut()
        stop_server(server)
        successor = start_server(client_database["url"], key=client_database["keys"]["all"])
        try:
            async with http_client(successor.url, successor.key) as client2:
                http2 = Http(client2)
                await http2.event("SOLD", sku, wh, 2)
                await http2.event("RECEIVED", sku, wh, 10)
                proxy.upstream = successor.port
                await seen.wait_until(_shows(15), "the state missed while disconnected")
                await http2.event("SOLD", sku, wh, 1)
                await seen.wait_until(_shows(14), "a change after the restart")
                truth = (await http2.ok("query($s: [String!]!) { availability(skuCodes: $s) { version } }", s=[sku]))[
                    "availability"
                ][0]
        finally:
            stop_server(successor)
    assert seen.error is None and watch.reconnects >= 2
    # each state once, versions strictly increasing across both reconnects (never backwards); the two
    # changes made while disconnected arrive as one state, the latest
    assert [s.available for s in seen.states] == [5, 6, 7, 15, 14]
    versions = [s.version for s in seen.states]
    assert versions == sorted(set(versions)), versions
    assert watch.latest[sku].version == truth["version"] and watch.latest[sku].available == 14


async def test_a_subscription_refused_while_the_database_is_busy_is_tried_again(
    client_database: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """UNAVAILABLE (the server's database busy or unreachable) is not a refusal for good: the watch
    subscribes again after a backoff and ends at the true state."""
    # one connection, and a request waits 0.3 s for it before it is answered UNAVAILABLE
    small = {"db_pool_size": "1", "db_max_overflow": "0", "db_pool_warm": "1", "db_pool_timeout_seconds": "0.3"}
    busy = start_server(client_database["url"], key=client_database["keys"]["all"], **small)
    locker = await asyncpg.connect(client_database["url"].replace("postgresql+asyncpg", "postgresql"))
    try:
        async with (
            http_client(busy.url, busy.key) as admin,
            http_client(busy.url, client_database["keys"]["storefront"]) as shop,
        ):
            http = Http(admin)
            sku, wh = unique("SKU"), unique("WH")
            await http.catalogue([sku], [wh])
            await http.event("RECEIVED", sku, wh, 5)
            # the storefront's key is checked once over HTTP, so the websocket finds it in the server's cache
            assert (await Http(shop).ok("query($s: [String!]!) { availability(skuCodes: $s) { available } }", s=[sku]))[
                "availability"
            ] == [{"available": 5}]

            # an ERP's event on that SKU takes the server's one connection and waits for the position's
            # row lock, which this test holds
            lock = locker.transaction()
            await lock.start()
            await locker.execute(
                "SELECT 1 FROM stock_levels l JOIN skus s ON s.id = l.sku_id WHERE s.code = $1 FOR UPDATE", sku
            )
            receipt = asyncio.create_task(http.event("RECEIVED", sku, wh, 1))
            async with asyncio.timeout(TIMEOUT):
                while not await locker.fetchval(  # noqa: ASYNC110 (another process's wait: poll it)
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                ):
                    await asyncio.sleep(0.02)
            storefront = StockwireClient(
                f"{busy.url}/graphql", api_key=client_database["keys"]["storefront"], live=FAST
            )
            watch = storefront.watch_availability([sku])
            async with Collector(watch) as seen:
                async with asyncio.timeout(TIMEOUT):  # refused for now, at least once
                    while not watch.refusals:
                        assert seen.error is None, seen.error
                        await asyncio.sleep(0.05)
                assert "subscription refused for now (UNAVAILABLE)" in caplog.text
                assert seen.states == []
                await lock.commit()  # the lock goes: the event, then the watch, get through
                await asyncio.wait_for(receipt, TIMEOUT)
                await seen.wait_until(_shows(6), "the state once the database is free")
                assert seen.error is None and watch.reconnects >= 1
    finally:
        await locker.close()
        stop_server(busy)


async def test_a_refused_key_is_an_error_not_a_reconnect_loop(server: Server) -> None:
    client = StockwireClient(f"{server.url}/graphql", api_key="not-a-key", live=FAST)
    watch = client.watch_availability(["X"])
    with pytest.raises(SubscriptionError):
        async with asyncio.timeout(TIMEOUT):
            async for _ in watch:
                pass
    assert watch.reconnects == 0


async def test_reserve_retried_after_a_lost_answer_holds_exactly_once(
    client_database: dict[str, Any], proxy: Proxy, http: Http
) -> None:
    sku, wh = unique("SKU"), unique("WH")
    await http.catalogue([sku], [wh])
    await http.event("RECEIVED", sku, wh, 5)
    cart = unique("cart")
    async with StockwireClient(
        proxy.url, api_key=client_database["keys"]["checkout"], retry=Retry(first_delay=0.05)
    ) as sw:
        await sw.checkout.reserve([ReserveLine(sku, 1)], cart_ref=unique("warm"))  # a connection, by hash
        proxy.drop_responses = 1  # the next reserve is served, and its answer lost on the way back
        held = await sw.checkout.reserve([ReserveLine(sku, 3)], cart_ref=cart)
        assert proxy.dropped == 1
        assert held.ok and held.reservation is not None
        assert [(ln.sku_code, ln.location_code, ln.quantity) for ln in held.reservation.lines] == [(sku, wh, 3)]
        # one hold on the server for that cart, and 1 + 3 units reserved: the retry held nothing more
        rows = (await http.ok("query($c: String!) { reservations(cartRef: $c) { id } }", c=cart))["reservations"]
        assert [r["id"] for r in rows] == [held.reservation.id]
        assert (await http.levels([sku]))[f"{sku}|{wh}"]["reserved"] == 4

        short = await sw.checkout.reserve([ReserveLine(sku, 2)])  # 1 left
        assert short.reservation is None and [e.code for e in short.user_errors] == ["INSUFFICIENT_STOCK"]

        extended = await sw.checkout.extend(held.reservation.id, 1800)
        assert extended.ok and extended.reservation is not None
        assert extended.reservation.expires_at > held.reservation.expires_at
        committed = await sw.checkout.commit(held.reservation.id, order_ref="SO-1")
        assert committed.ok and committed.reservation is not None and committed.reservation.status == "COMMITTED"
        again = await sw.checkout.release(held.reservation.id)
        assert again.reservation is None and [e.code for e in again.user_errors] == ["RESERVATION_NOT_ACTIVE"]
    level = (await http.levels([sku]))[f"{sku}|{wh}"]
    assert (level["reserved"], level["committed"]) == (1, 3)


async def test_the_router_decides_and_holds(client_database: dict[str, Any], server: Server, http: Http) -> None:
    sku, near, far = unique("SKU"), unique("DEN"), unique("NYC")
    await http.catalogue([sku], [])
    await http.ok(
        "mutation($i: [LocationInput!]!) { upsertLocations(input: $i) { userErrors { code } } }",
        i=[
            {"code": near, "name": "Denver", "kind": "WAREHOUSE", "latitude": 39.74, "longitude": -104.99},
            {"code": far, "name": "New York", "kind": "WAREHOUSE", "latitude": 40.71, "longitude": -74.0},
        ],
    )
    await http.event("RECEIVED", sku, near, 4)
    await http.event("RECEIVED", sku, far, 4)
    order = Order(unique("SO"), (ReserveLine(sku, 2),), destination=DENVER)
    async with StockwireClient(f"{server.url}/graphql", api_key=client_database["keys"]["router"]) as sw:
        dry = await sw.router.route_order(order)
        assert dry.outcome == "DRY_RUN" and dry.id is None
        assert [(s.location_code, [(ln.sku_code, ln.quantity) for ln in s.lines]) for s in dry.shipments] == [
            (near, [(sku, 2)])
        ]
        assert dry.reason.startswith(f"{near} ships all 1 line")
        held = await sw.router.route_and_reserve(order)
        repeat = await sw.router.route_and_reserve(order)  # idempotent by orderRef
        too_much = await sw.router.route_order(Order(unique("SO"), (ReserveLine(sku, 99),)))
    assert held.ok and held.decision is not None and held.decision.outcome == "RESERVED"
    assert held.reservation is not None and repeat.reservation is not None
    assert repeat.reservation.id == held.reservation.id
    assert [e.code for e in too_much.user_errors] == ["INSUFFICIENT_STOCK"]
    levels = await http.levels([sku])
    assert (levels[f"{sku}|{near}"]["reserved"], levels[f"{sku}|{far}"]["reserved"]) == (2, 0)


async def test_a_key_without_the_scope_gets_a_typed_error(client_database: dict[str, Any], server: Server) -> None:
    async with StockwireClient(f"{server.url}/graphql", api_key=client_database["keys"]["storefront"]) as sw:
        with pytest.raises(StockwireError) as refused:
            await sw.checkout.reserve([ReserveLine("X", 1)])
    assert refused.value.code == "FORBIDDEN"


# --- trusted documents ------------------------------------------------------------------------------


def test_the_manifest_is_built_from_the_operation_files() -> None:
    import json

    from app.graphql.persisted import DEFAULT_MANIFEST, build_manifest

    assert json.loads(DEFAULT_MANIFEST.read_text()) == build_manifest(), "run: python -m app.graphql.persisted"


@pytest.fixture
def trusted_server(client_database: dict[str, Any]) -> Iterator[Server]:
    live = start_server(
        client_database["url"], key=client_database["keys"]["all"], storefront_trusted_documents_only="true"
    )
    try:
        yield live
    finally:
        stop_server(live)


async def test_storefront_keys_run_only_trusted_documents(
    client_database: dict[str, Any], trusted_server: Server
) -> None:
    storefront, admin = client_database["keys"]["storefront"], client_database["keys"]["all"]
    url = f"{trusted_server.url}/graphql"
    operation = OPERATIONS["Availability"]
    by_hash = {"persistedQuery": {"version": 1, "sha256Hash": operation.sha256}}
    arbitrary = 'query { availability(skuCodes: ["X"]) { skuCode available } }'

    async def post(key: str, body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            return await client.post(url, json=body)

    def code(response: httpx.Response) -> str:
        return str(response.json()["errors"][0]["extensions"]["code"])

    # the hash alone runs the known document
    ok = await post(storefront, {"extensions": by_hash, "variables": {"skus": ["X"]}})
    assert ok.status_code == 200 and ok.json() == {"data": {"availability": []}}, ok.text
    # anything else from a storefront key is refused, and nothing ran
    refused = await post(storefront, {"query": arbitrary})
    assert (refused.status_code, code(refused)) == (400, "PERSISTED_QUERY_REQUIRED")
    unknown = await post(storefront, {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab" * 32}}})
    assert (unknown.status_code, code(unknown)) == (400, "PERSISTED_QUERY_NOT_FOUND")
    mismatch = await post(storefront, {"query": arbitrary, "extensions": by_hash})
    assert (mismatch.status_code, code(mismatch)) == (400, "PERSISTED_QUERY_HASH_MISMATCH")
    # other keys (server-side services) may still send any query
    assert "errors" not in (await post(admin, {"query": arbitrary})).json()

    # over websockets: the client's subscription (hash + text) is admitted...
    client = StockwireClient(url, api_key=storefront, live=FAST)
    watch = client.watch_availability(["X"])
    async with asyncio.timeout(TIMEOUT):
        async for event in watch:
            assert event == SnapshotComplete(resync=False)  # "X" is unknown: no state, a complete snapshot
            break
    # ...and an arbitrary subscription from a storefront key closes the socket (4400)
    from gql import Client, gql
    from gql.transport.exceptions import TransportError
    from gql.transport.websockets import WebsocketsTransport

    transport = WebsocketsTransport(
        url=trusted_server.ws_url,
        init_payload={"authorization": f"Bearer {storefront}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    with pytest.raises(TransportError) as closed:
        async with asyncio.timeout(TIMEOUT), Client(transport=transport) as session:
            async for _ in session.subscribe(gql("subscription { availabilityChanged { skuCode } }")):
                pass
    assert "4400" in repr(closed.value) or "4400" in repr(closed.value.__cause__), repr(closed.value)


async def test_the_client_falls_back_to_the_text_when_the_server_has_no_manifest(
    client_database: dict[str, Any], tmp_path: Any
) -> None:
    empty = tmp_path / "manifest.json"
    empty.write_text('{"format": "apollo-persisted-query-manifest", "version": 1, "operations": []}')
    live = start_server(client_database["url"], key=client_database["keys"]["all"], persisted_documents=str(empty))
    try:
        async with StockwireClient(f"{live.url}/graphql", api_key=client_database["keys"]["router"]) as sw:
            decision = await sw.router.route_order(Order(unique("SO"), (ReserveLine("NO-SUCH", 1),)))
            assert sw.connection._text_needed == {"RouteOrder"}  # tried by hash once, then sent the text
    finally:
        stop_server(live)
    assert [e.code for e in decision.user_errors] == ["UNKNOWN_SKU"]
