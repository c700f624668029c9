"""Subscriptions over real websockets (gql on both protocols) against one live server on PostgreSQL.

Every cause of an availability change publishes (events, reserve, commit, release, expiry, location and
SKU switches), a change nobody can see publishes nothing, versions only go up, and the connection has
keepalives and a subscription limit. The multi-process and Redis cases are in test_realtime_multiprocess.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import create_test_key
from tests.helpers import COMMIT, RELEASE, UPSERT_LOCATIONS, UPSERT_SKUS
from tests.live import start_server, stop_server
from tests.subscribers import (
    AVAILABILITY_SUB,
    LEGACY_WS,
    LEVELS_SUB,
    TIMEOUT,
    TRANSPORT_WS,
    Http,
    Subscriber,
    by_position,
    by_sku,
    first_messages,
    http_client,
    unique,
)

pytestmark = pytest.mark.slow  # one live server process for the module

MAX_SUBSCRIPTIONS = 3
MAX_CODES = 50


@dataclass
class Live:
    server: Live
    key: str

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    def subscribe(self, query: str, variables: dict[str, Any], protocol: str = TRANSPORT_WS) -> Subscriber:
        return Subscriber(self.ws_url, query, variables, protocol=protocol, api_key=self.key)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str]) -> Iterator[Live]:
    url = new_database()
    key = asyncio.run(create_test_key(url))
    live = start_server(
        url,
        max_subscriptions_per_connection=str(MAX_SUBSCRIPTIONS),
        max_codes_per_subscription=str(MAX_CODES),
        keepalive_seconds="0.3",
    )
    try:
        yield Live(live, key)
    finally:
        stop_server(live)


@pytest.fixture
async def http(server: Live) -> AsyncIterator[Http]:
    async with http_client(server.server.url, server.key) as client:
        yield Http(client)


def _unique(prefix: str) -> str:
    return unique(prefix)


def _available(value: int) -> Any:
    return lambda ps: bool(ps) and ps[-1]["available"] == value


async def test_snapshot_first_then_a_message_for_every_cause(server: Live, http: Http) -> None:
    sku, wh1, wh2 = _unique("SKU"), _unique("WH"), _unique("WH")
    await http.catalogue([sku], [wh1, wh2])
    await http.event("RECEIVED", sku, wh1, 10)
    await http.event("RECEIVED", sku, wh2, 5)

    async with (
        server.subscribe(AVAILABILITY_SUB, {"skus": [sku]}) as avail,
        server.subscribe(LEVELS_SUB, {"skus": [sku]}) as levels,
    ):
        await first_messages(avail, 1)
        await first_messages(levels, 2, "both positions")
        assert avail.payloads[0]["available"] == 15  # the current state first
        assert {p["locationCode"]: p["onHand"] for p in levels.payloads} == {wh1: 10, wh2: 5}

        await http.event("SOLD", sku, wh1, 1)  # an event
        await avail.wait_until(_available(14), "the sale")
        rid = await http.reserve(sku, 2, ttlSeconds=600)  # a reservation
        await avail.wait_until(_available(12), "the reservation")
        data = await http.ok(COMMIT, id=rid, orderRef="order-1")  # a commit: available stays, components move
        assert data["commitReservation"]["userErrors"] == []
        await avail.wait_until(
            lambda ps: (
                sum(loc["committed"] for loc in ps[-1]["locations"]) == 2
                and sum(loc["reserved"] for loc in ps[-1]["locations"]) == 0
            ),
            "the commit (reserved -> committed)",
        )
        assert avail.payloads[-1]["available"] == 12
        rid = await http.reserve(sku, 3)
        await avail.wait_until(_available(9), "the second reservation")
        data = await http.ok(RELEASE, id=rid)  # a release
        assert data["releaseReservation"]["userErrors"] == []
        await avail.wait_until(_available(12), "the release")
        await http.reserve(sku, 1, ttlSeconds=1)
        await avail.wait_until(_available(11), "the short reservation")
        await avail.wait_until(_available(12), "the expiry (sweeper)")  # nobody calls anything: the sweeper

        # a location switched off: its units no longer count (WH-1 has 9 on hand, 2 committed)
        await http.ok(UPSERT_LOCATIONS, input=[{"code": wh2, "name": wh2, "kind": "WAREHOUSE", "active": False}])
        await avail.wait_until(_available(7), "the location switched off")
        await http.ok(UPSERT_SKUS, input=[{"code": sku, "name": sku, "active": False}])  # the SKU switched off
        await avail.wait_until(_available(0), "the SKU switched off")
        await http.ok(UPSERT_SKUS, input=[{"code": sku, "name": sku, "active": True}])
        await avail.wait_until(_available(7), "the SKU switched on again")

        truth = await http.availability(sku)
        await avail.wait_until(lambda ps: ps[-1]["version"] == truth["version"], "the latest version")
        await levels.wait_until(
            lambda ps: levels.latest(by_position)[f"{sku}|{wh1}"]["committed"] == 2, "the position's commit"
        )
    avail.assert_versions_increase(by_sku)
    levels.assert_versions_increase(by_position)
    # every step above was one message: nothing was coalesced away because each was awaited first
    assert [p["available"] for p in avail.payloads] == [15, 14, 12, 12, 9, 12, 11, 12, 7, 0, 7]
    assert avail.payloads[-1]["available"] == truth["available"]


async def test_the_legacy_graphql_ws_protocol_works_too(server: Live, http: Http) -> None:
    sku, wh = _unique("SKU"), _unique("WH")
    await http.catalogue([sku], [wh])
    await http.event("RECEIVED", sku, wh, 4)
    async with server.subscribe(AVAILABILITY_SUB, {"skus": [sku]}, LEGACY_WS) as avail:
        await first_messages(avail, 1)
        assert avail.payloads[0]["available"] == 4
        await http.event("RECEIVED", sku, wh, 3)
        await avail.wait_until(_available(7), "the change over graphql-ws")
    avail.assert_versions_increase(by_sku)


async def test_a_change_nobody_can_see_sends_nothing(server: Live, http: Http) -> None:
    sku, wh = _unique("SKU"), _unique("WH")
    await http.catalogue([sku], [wh])
    await http.event("RECEIVED", sku, wh, 8, external_id=f"{sku}-first")
    async with server.subscribe(AVAILABILITY_SUB, {"skus": [sku]}) as avail:
        await first_messages(avail, 1)
        before = avail.payloads[0]["version"]
        # renaming the location moves Availability.version (every location change does) but no figure
        await http.ok(UPSERT_LOCATIONS, input=[{"code": wh, "name": "renamed", "kind": "WAREHOUSE"}])
        assert (await http.availability(sku))["version"] > before
        await http.event("RECEIVED", sku, wh, 8, external_id=f"{sku}-first")  # a duplicate: nothing applied
        await http.event("COUNTED", sku, wh, 8)  # a count that confirms what is there
        await asyncio.sleep(1.0)  # the relay polls every 0.5 s: the no-ops had their chance to go out
        await http.event("RECEIVED", sku, wh, 1)
        await avail.wait_until(lambda ps: len(ps) >= 2, "the real change")
        await asyncio.sleep(0.3)
    assert [p["available"] for p in avail.payloads] == [8, 9]
    avail.assert_versions_increase(by_sku)


UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  userErrors { code message } } }"""


async def test_a_channel_subscription_follows_its_rules_and_locations(server: Live, http: Http) -> None:
    sku, wh1, wh2, web = _unique("SKU"), _unique("WH"), _unique("WH"), _unique("web")
    await http.catalogue([sku], [wh1, wh2])
    await http.event("RECEIVED", sku, wh1, 10)
    await http.event("RECEIVED", sku, wh2, 100)

    async def channel(**rules: Any) -> None:
        data = await http.ok(UPSERT_CHANNELS, input=[{"code": web, "name": web, **rules}])
        assert data["upsertChannels"]["userErrors"] == [], data

    await channel(locationCodes=[wh1], safetyBufferUnits=1)
    async with (
        server.subscribe(AVAILABILITY_SUB, {"skus": [sku], "channel": web}) as web_sub,
        server.subscribe(AVAILABILITY_SUB, {"skus": [sku]}) as everywhere,
    ):
        await first_messages(web_sub, 1)
        await first_messages(everywhere, 1)
        assert (web_sub.payloads[0]["available"], web_sub.payloads[0]["channelCode"]) == (9, web)
        await channel(locationCodes=[wh1], safetyBufferUnits=3)  # a rule change
        await web_sub.wait_until(_available(7), "the rule change")
        await http.event("SOLD", sku, wh1, 2)  # stock at the channel's location
        await web_sub.wait_until(_available(5), "the sale at the channel's location")
        await channel(locationCodes=[wh2], safetyBufferUnits=3)  # a location relinked
        await web_sub.wait_until(_available(97), "the channel's new location")
        await everywhere.wait_until(_available(108), "the sale, for the all-locations figure")
    web_sub.assert_versions_increase(by_sku)
    assert [p["available"] for p in web_sub.payloads] == [9, 7, 5, 97]
    assert {p["channelCode"] for p in web_sub.payloads} == {web}
    # the rule change moved no stock: the all-locations subscriber heard only about the sale
    assert [p["available"] for p in everywhere.payloads] == [110, 108]


async def test_stock_level_subscription_by_location(server: Live, http: Http) -> None:
    sku1, sku2, wh1, wh2 = _unique("SKU"), _unique("SKU"), _unique("WH"), _unique("WH")
    await http.catalogue([sku1, sku2], [wh1, wh2])
    for sku in (sku1, sku2):
        await http.event("RECEIVED", sku, wh1, 1)
        await http.event("RECEIVED", sku, wh2, 2)
    async with server.subscribe(LEVELS_SUB, {"locs": [wh2]}) as levels:
        await first_messages(levels, 2, "the positions at one location")
        await http.event("RECEIVED", sku1, wh1, 10)  # another location: not for this subscriber
        await http.event("RECEIVED", sku2, wh2, 10)
        await levels.wait_until(lambda ps: ps[-1]["onHand"] == 12, "the change at the location")
    assert {p["locationCode"] for p in levels.payloads} == {wh2}
    assert [(p["skuCode"], p["onHand"]) for p in levels.payloads] == [(sku1, 2), (sku2, 2), (sku2, 12)]
    levels.assert_versions_increase(by_position)


async def test_bad_arguments_are_graphql_errors(server: Live) -> None:
    for variables, message in (
        ({"skus": ["X"], "channel": "no-such-channel"}, "no channel"),
        ({"skus": [f"S{i}" for i in range(MAX_CODES + 1)]}, f"at most {MAX_CODES}"),
    ):
        async with server.subscribe(AVAILABILITY_SUB, variables) as sub:
            await sub.wait_until(lambda _: sub.error is not None, "the error")
        assert isinstance(sub.error, TransportQueryError), sub.error
        assert message in str(sub.error)


# -- the protocols themselves, with a raw websocket client ---------------------------------------


async def _open(server: Live, protocol: str) -> ClientConnection:
    ws = await connect(server.ws_url, subprotocols=[protocol], open_timeout=TIMEOUT)  # type: ignore[list-item]
    payload = {"authorization": f"Bearer {server.key}"}
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    assert await _next(ws, {"connection_ack"}) == {"type": "connection_ack"}
    return ws


async def _next(ws: ClientConnection, types: set[str]) -> dict[str, Any]:
    """The next message of one of these types (others, e.g. keepalives, are skipped)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] in types:
                return message


def _subscribe(protocol: str, op_id: str, sku: str) -> str:
    payload = {"query": AVAILABILITY_SUB, "variables": {"skus": [sku]}}
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return json.dumps({"type": kind, "id": op_id, "payload": payload})


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_subscriptions_per_connection_are_limited(server: Live, http: Http, protocol: str) -> None:
    sku, wh = _unique("SKU"), _unique("WH")
    await http.catalogue([sku], [wh])
    data_type = "next" if protocol == TRANSPORT_WS else "data"
    ws = await _open(server, protocol)
    try:
        for i in range(MAX_SUBSCRIPTIONS):
            await ws.send(_subscribe(protocol, str(i), sku))
            assert (await _next(ws, {data_type, "error"}))["type"] == data_type
        await ws.send(_subscribe(protocol, "one-too-many", sku))
        refused = await _next(ws, {data_type, "error"})
        assert refused["type"] == "error" and refused["id"] == "one-too-many"
        assert "Subscription limit reached" in json.dumps(refused["payload"])
    finally:
        await ws.close()


async def test_keepalive_on_graphql_transport_ws_is_ping_pong_both_ways(server: Live) -> None:
    ws = await _open(server, TRANSPORT_WS)
    try:
        assert await _next(ws, {"ping"}) == {"type": "ping"}  # the server pings an idle connection
        await ws.send(json.dumps({"type": "pong"}))
        await ws.send(json.dumps({"type": "ping"}))  # and answers the client's ping
        assert await _next(ws, {"pong"}) == {"type": "pong"}
        assert await _next(ws, {"ping"}) == {"type": "ping"}  # and keeps pinging
    finally:
        await ws.close()


async def test_keepalive_on_legacy_graphql_ws_is_ka(server: Live) -> None:
    ws = await _open(server, LEGACY_WS)
    try:
        for _ in range(3):
            assert await _next(ws, {"ka"}) == {"type": "ka"}
    finally:
        await ws.close()


async def test_health_and_readiness(server: Live) -> None:
    async with httpx.AsyncClient(base_url=server.server.url, timeout=TIMEOUT) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["broadcast"] == "ok"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_an_error_in_a_subscription_reaches_the_client_with_its_code(server: Live, protocol: str) -> None:
    # errors of streamed results get their code from StockwireSchema._guarded (not a per-message hook)
    query = 'subscription($c: String) { availabilityChanged(skuCodes: ["X"], channelCode: $c) { skuCode } }'
    kind, data_type = ("subscribe", "next") if protocol == TRANSPORT_WS else ("start", "data")
    ws = await _open(server, protocol)
    try:
        payload = {"query": query, "variables": {"c": "NO-SUCH-CHANNEL"}}
        await ws.send(json.dumps({"type": kind, "id": "1", "payload": payload}))
        message = await _next(ws, {data_type, "error"})
        errors = message["payload"]["errors"] if message["type"] == data_type else message["payload"]
        assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"]
        assert "NO-SUCH-CHANNEL" in errors[0]["message"]
    finally:
        await ws.close()
