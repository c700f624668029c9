"""Websocket authentication against a live server: the key in connection_init or in the handshake's
Authorization header, a socket closed soon after its key is revoked, and connection_init required
within ws_init_timeout_seconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.security import keys
from tests.conftest import create_test_key
from tests.live import Server, start_server, stop_server

pytestmark = pytest.mark.slow  # one live server process for the module

TRANSPORT_WS = "graphql-transport-ws"
TIMEOUT = 15.0
SUB = 'subscription { availabilityChanged(skuCodes: ["SKU-1"]) { skuCode available } }'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str]) -> Iterator[Server]:
    url = new_database()
    key = asyncio.run(create_test_key(url))
    live = start_server(url, key=key, auth_cache_seconds="1", ws_init_timeout_seconds="1")
    try:
        yield live
    finally:
        stop_server(live)


async def _next(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a keepalive."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] not in ("ping", "pong", "ka"):
                return message


async def _closed_with(ws: ClientConnection) -> int:
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code


async def _new_key(server: Server, scopes: list[str]) -> tuple[str, str]:
    query = 'mutation($s: [ApiScope!]!) { createApiKey(input: {name: "ws", scopes: $s}) { secret apiKey { id } } }'
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=TIMEOUT) as client:
        made = (await client.post("/graphql", json={"query": query, "variables": {"s": scopes}})).json()
    payload = made["data"]["createApiKey"]
    return payload["secret"], payload["apiKey"]["id"]


async def test_a_socket_is_closed_soon_after_its_key_is_revoked(server: Server) -> None:
    secret, key_id = await _new_key(server, ["STOREFRONT"])
    ws = await connect(server.ws_url, subprotocols=[TRANSPORT_WS], open_timeout=TIMEOUT)  # type: ignore[list-item]
    try:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {secret}"}}))
        assert (await _next(ws))["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {"query": SUB}}))
        revoke = "mutation($id: ID!) { revokeApiKey(id: $id) { userErrors { code } } }"
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=TIMEOUT) as client:
            done = (await client.post("/graphql", json={"query": revoke, "variables": {"id": key_id}})).json()
        assert done["data"]["revokeApiKey"]["userErrors"] == []
        assert await _closed_with(ws) == 4403
    finally:
        await ws.close()


async def test_the_handshake_authorization_header_also_authenticates(server: Server) -> None:
    ws = await connect(
        server.ws_url,
        subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {server.key}"},
        open_timeout=TIMEOUT,
    )
    try:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert (await _next(ws))["type"] == "connection_ack"
        query = 'query { availability(skuCodes: ["SKU-1"]) { skuCode } }'  # a storefront read over the socket
        await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {"query": query}}))
        assert await _next(ws) == {"id": "1", "type": "next", "payload": {"data": {"availability": []}}}
    finally:
        await ws.close()


async def test_connection_init_must_come_within_the_timeout(server: Server) -> None:
    ws = await connect(server.ws_url, subprotocols=[TRANSPORT_WS], open_timeout=TIMEOUT)  # type: ignore[list-item]
    try:
        assert await _closed_with(ws) == 4408  # "Connection initialisation timeout"
    finally:
        await ws.close()


def test_a_malformed_token_never_reaches_the_database() -> None:
    assert keys.prefix_of("sw_0123456789ab_" + "A" * 43) == "0123456789ab"
    for token in ("", "sw_", "sw_XYZ_abc", "sw_0123456789ab_short", "' OR 1=1 --", "sw_0123456789ab_" + "A" * 44):
        assert keys.prefix_of(token) is None, token


async def _stock(server: Server, sku: str, location: str, units: int) -> None:
    """The SKU and location, with units received there (through the server's every-scope key)."""
    catalogue = f"""mutation {{ upsertSkus(input: [{{code: "{sku}", name: "n"}}]) {{ userErrors {{ code }} }}
      upsertLocations(input: [{{code: "{location}", name: "n", kind: WAREHOUSE}}]) {{ userErrors {{ code }} }} }}"""
    received = f"""mutation {{ recordInventoryEvents(input: [{{source: "ws", externalId: "{sku}", type: RECEIVED,
      skuCode: "{sku}", locationCode: "{location}", quantity: {units}, occurredAt: "2026-01-01T00:00:00Z"}}]) {{
      userErrors {{ code }} }} }}"""
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=TIMEOUT) as client:
        for query in (catalogue, received):
            assert "errors" not in (await client.post("/graphql", json={"query": query})).json()


async def test_a_storefront_subscription_reads_per_location_availability_but_no_internals(server: Server) -> None:
    secret, _ = await _new_key(server, ["STOREFRONT"])
    ws = await connect(server.ws_url, subprotocols=[TRANSPORT_WS], open_timeout=TIMEOUT)  # type: ignore[list-item]
    try:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {secret}"}}))
        assert (await _next(ws))["type"] == "connection_ack"
        internals = 'subscription { stockLevelChanged(skuCodes: ["SKU-1"]) { locationCode onHand reserved } }'
        await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {"query": internals}}))
        refused = await _next(ws)
        assert refused["id"] == "1" and refused["type"] in ("error", "next"), refused
        errors = refused["payload"] if refused["type"] == "error" else refused["payload"]["errors"]
        assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"]
        assert errors[0]["extensions"]["fields"] == ["StockLevel.onHand", "StockLevel.reserved"]

        await _stock(server, "SKU-WS", "WH-WS", 4)
        pickup = """subscription { availabilityChanged(skuCodes: ["SKU-WS"]) {
          available locations { locationCode available } } }"""
        await ws.send(json.dumps({"type": "subscribe", "id": "2", "payload": {"query": pickup}}))
        opened = await _next(ws)
        assert opened == {
            "id": "2",
            "type": "next",
            "payload": {
                "data": {
                    "availabilityChanged": {"available": 4, "locations": [{"locationCode": "WH-WS", "available": 4}]}
                }
            },
        }
    finally:
        await ws.close()
