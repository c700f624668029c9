"""Clients of a live server for the realtime tests: GraphQL over HTTP, and gql websocket subscriptions
running in the background with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from tests.helpers import RECORD, RESERVE, UPSERT_LOCATIONS, UPSERT_SKUS

TRANSPORT_WS = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL  # "graphql-transport-ws"
LEGACY_WS = WebsocketsTransport.APOLLO_SUBPROTOCOL  # "graphql-ws" (pitfalls.md #8: pin one explicitly)
TIMEOUT = 15.0

LEVEL = "skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version"
AVAILABILITY_SUB = f"""subscription($skus: [String!], $channel: String) {{
  availabilityChanged(skuCodes: $skus, channelCode: $channel) {{
    skuCode channelCode available oversold version locations {{ {LEVEL} }} }} }}"""
LEVELS_SUB = f"""subscription($skus: [String!], $locs: [String!]) {{
  stockLevelChanged(skuCodes: $skus, locationCodes: $locs) {{ {LEVEL} }} }}"""
AVAILABILITY = f"""query($skus: [String!]!) {{ availability(skuCodes: $skus) {{
  skuCode channelCode available oversold version locations {{ {LEVEL} }} }} }}"""
LEVELS = f"""query($skus: [String!]) {{ stockLevels(skuCodes: $skus, first: 1000) {{ {LEVEL} }} }}"""

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def http_client(base_url: str, api_key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=TIMEOUT)


class Http:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def ok(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.client.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def catalogue(self, skus: list[str], locations: list[str]) -> None:
        data = await self.ok(UPSERT_SKUS, input=[{"code": c, "name": c} for c in skus])
        assert data["upsertSkus"]["userErrors"] == []
        data = await self.ok(UPSERT_LOCATIONS, input=[{"code": c, "name": c, "kind": "WAREHOUSE"} for c in locations])
        assert data["upsertLocations"]["userErrors"] == []

    async def event(self, type_: str, sku: str, loc: str, quantity: int, external_id: str | None = None) -> None:
        e = {
            "source": "erp",
            "externalId": external_id or f"sub-{next(_ids)}",
            "type": type_,
            "skuCode": sku,
            "locationCode": loc,
            "quantity": quantity,
            "occurredAt": "2026-01-01T00:00:00Z",
        }
        data = await self.ok(RECORD, input=[e])
        assert data["recordInventoryEvents"]["userErrors"] == [], data

    async def reserve(self, sku: str, quantity: int, **extra: Any) -> str:
        rid = await self.try_reserve(sku, quantity, **extra)
        assert rid is not None, f"reserve {quantity} x {sku} was refused"
        return rid

    async def try_reserve(self, sku: str, quantity: int, **extra: Any) -> str | None:
        """The reservation's id, or None when refused (INSUFFICIENT_STOCK and the like)."""
        payload = {"lines": [{"skuCode": sku, "quantity": quantity}], "idempotencyKey": f"k-{next(_ids)}", **extra}
        data = await self.ok(RESERVE, input=payload)
        reservation = data["reserve"]["reservation"]
        return None if reservation is None else str(reservation["id"])

    async def availability(self, sku: str) -> dict[str, Any]:
        return (await self.availabilities([sku]))[sku]

    async def availabilities(self, skus: list[str]) -> dict[str, dict[str, Any]]:
        rows: list[dict[str, Any]] = (await self.ok(AVAILABILITY, skus=skus))["availability"]
        return {r["skuCode"]: r for r in rows}

    async def levels(self, skus: list[str]) -> dict[str, dict[str, Any]]:
        rows: list[dict[str, Any]] = (await self.ok(LEVELS, skus=skus))["stockLevels"]
        return {by_position(r): r for r in rows}


class Subscriber:
    """Collects every message of one subscription; `wait_until` fails the test instead of hanging."""

    def __init__(
        self,
        ws_url: str,
        query: str,
        variables: dict[str, Any] | None = None,
        protocol: str = TRANSPORT_WS,
        api_key: str | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.query = query
        self.variables = variables or {}
        self.protocol = protocol
        self.init_payload = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.messages: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def field(self) -> str:
        return "availabilityChanged" if "availabilityChanged" in self.query else "stockLevelChanged"

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [m[self.field] for m in self.messages]

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(TIMEOUT):
                    await task

    async def _run(self) -> None:
        transport = WebsocketsTransport(
            url=self.ws_url, subprotocols=[self.protocol], init_payload=self.init_payload, ack_timeout=TIMEOUT
        )
        try:
            async with Client(transport=transport) as session:
                request = GraphQLRequest(self.query, variable_values=self.variables)
                async for message in session.subscribe(request):
                    self.messages.append(message)
                    self._changed.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
            self._changed.set()

    async def wait_until(self, condition: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        """Until `condition(payloads)` holds; fails on timeout or if the subscription ended."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition(self.payloads):
                    if self.error is not None:
                        pytest.fail(f"subscription failed while waiting for {what}: {self.error!r}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}; received {self.payloads}")

    def latest(self, key: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
        """The last payload per key (e.g. per SKU)."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.payloads:
            out[key(p)] = p
        return out

    def assert_versions_increase(self, key: Callable[[dict[str, Any]], str]) -> None:
        """The server never sends a version at or below one it already sent for the same key."""
        last: dict[str, int] = {}
        for p in self.payloads:
            k = key(p)
            assert p["version"] > last.get(k, 0), f"{k}: version {p['version']} after {last.get(k)}: {self.payloads}"
            last[k] = p["version"]


def by_sku(p: dict[str, Any]) -> str:
    return str(p["skuCode"])


def by_position(p: dict[str, Any]) -> str:
    return f"{p['skuCode']}|{p['locationCode']}"


async def first_messages(sub: Subscriber, count: int, what: str = "the initial state") -> None:
    await sub.wait_until(lambda ps: len(ps) >= count, what)
