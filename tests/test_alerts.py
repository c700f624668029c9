"""Alerts per channel: OUT_OF_STOCK, BACK_IN_STOCK and LOW_STOCK, as published messages (in the pushes to
the channel's endpoint) and as subscription events (`channelAlerts` over a real websocket)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.channel_endpoint import Endpoint, serve
from tests.conftest import Api, create_test_key
from tests.helpers import catalogue, event, receive, record
from tests.live import Server, start_server, stop_server
from tests.subscribers import Http, Subscriber, http_client, unique

SECRET = "alerts-secret"
UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  channels { code lowStockThreshold } userErrors { code message field } } }"""
FIGURES = """query($skus: [String!]!, $channel: String!) { availability(skuCodes: $skus, channelCode: $channel) {
  skuCode available version } }"""
OUT_OF_SYNC = """query { channelPublications(channelCode: "WEB", outOfSyncOnly: true) { skuCode } }"""
ALERTS_SUB = """subscription($channel: String!, $skus: [String!], $threshold: Int) {
  channelAlerts(channelCode: $channel, skuCodes: $skus, lowStockThreshold: $threshold) {
  channelCode skuCode kind available previous lowStockThreshold version } }"""


async def _step(api: Api, endpoint: Endpoint, *events: dict[str, Any]) -> None:
    """Record events, then wait until the endpoint acknowledged the result and the worker recorded it."""
    if events:
        assert (await record(api, *events))["userErrors"] == []
    rows = (await api.ok(FIGURES, skus=["SKU-1"], channel="WEB"))["availability"]
    latest = {r["skuCode"]: (r["version"], r["available"]) for r in rows}
    await endpoint.wait_until(lambda: endpoint.shows == latest, f"the endpoint to show {latest}")
    async with asyncio.timeout(30):
        for _ in itertools.count():  # the acknowledgement is a row the worker writes: poll it
            if not (await api.ok(OUT_OF_SYNC))["channelPublications"]:
                break
            await asyncio.sleep(0.05)


async def test_pushes_carry_alerts_against_what_the_endpoint_last_acknowledged(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)
    async with serve(Endpoint(SECRET)) as endpoint:
        web = {"code": "WEB", "name": "Web", "locationCodes": ["WH-1"], "lowStockThreshold": 5}
        data = await api.ok(UPSERT_CHANNELS, input=[{**web, "endpointUrl": endpoint.url, "endpointSecret": SECRET}])
        assert data["upsertChannels"] == {"channels": [{"code": "WEB", "lowStockThreshold": 5}], "userErrors": []}
        await _step(api, endpoint)  # 10: in stock, above the threshold: no alert
        await _step(api, endpoint, event("SOLD", "SKU-1", "WH-1", 7))  # 3: below 5
        await _step(api, endpoint, event("SOLD", "SKU-1", "WH-1", 1))  # 2: still low, nothing new
        await _step(api, endpoint, event("SOLD", "SKU-1", "WH-1", 2))  # 0
        await _step(api, endpoint, event("RECEIVED", "SKU-1", "WH-1", 8))  # 8: back, above the threshold
        got = [(a["sku"], a["kind"], a["previous"], a["available"]) for a in endpoint.alerts]
        assert got == [
            ("SKU-1", "LOW_STOCK", 10, 3),
            ("SKU-1", "OUT_OF_STOCK", 2, 0),
            ("SKU-1", "BACK_IN_STOCK", 0, 8),
        ]
        assert all(r.signature_ok and r.status == 200 for r in endpoint.received)


async def test_a_negative_low_stock_threshold_is_refused(api: Api) -> None:
    await catalogue(api)
    bad = {"code": "WEB", "name": "Web", "locationCodes": ["WH-1"], "lowStockThreshold": -1}
    data = await api.ok(UPSERT_CHANNELS, input=[bad])
    assert [(e["code"], e["field"]) for e in data["upsertChannels"]["userErrors"]] == [
        ("INVALID_INPUT", ["input", "0", "lowStockThreshold"])
    ]
    assert await api.sql("SELECT code FROM channels") == []


# --- as subscription events, over a real websocket -------------------------------------------------


class AlertSubscriber(Subscriber):
    @property
    def field(self) -> str:
        return "channelAlerts"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str]) -> Iterator[tuple[Server, str]]:
    url = new_database()
    key = asyncio.run(create_test_key(url))
    server = start_server(url, key=key)
    try:
        yield server, key
    finally:
        stop_server(server)


def _kinds(payloads: list[dict[str, Any]]) -> list[tuple[str, str, int | None, int]]:
    return [(p["skuCode"], p["kind"], p["previous"], p["available"]) for p in payloads]


@pytest.mark.slow
async def test_channel_alerts_subscription_reports_crossings(live: tuple[Server, str]) -> None:
    server, key = live
    sku, empty, wh = unique("SKU"), unique("SKU"), unique("WH")
    async with http_client(server.url, key) as client:
        http = Http(client)
        await http.catalogue([sku, empty], [wh])
        await http.event("RECEIVED", sku, wh, 10)
        channel = unique("WEB")
        data = await http.ok(
            UPSERT_CHANNELS, input=[{"code": channel, "name": "Web", "locationCodes": [wh], "lowStockThreshold": 5}]
        )
        assert data["upsertChannels"]["userErrors"] == []
        variables = {"channel": channel, "skus": [sku, empty]}
        async with AlertSubscriber(server.ws_url, ALERTS_SUB, variables, api_key=key) as alerts:
            # the current state counts first: the empty SKU is out of stock now; 10 raises nothing
            await alerts.wait_until(lambda ps: len(ps) >= 1, "the initial state")
            assert _kinds(alerts.payloads) == [(empty, "OUT_OF_STOCK", None, 0)]
            await http.event("SOLD", sku, wh, 7)
            await alerts.wait_until(lambda ps: len(ps) >= 2, "LOW_STOCK")
            await http.event("SOLD", sku, wh, 3)
            await alerts.wait_until(lambda ps: len(ps) >= 3, "OUT_OF_STOCK")
            await http.event("RECEIVED", empty, wh, 2)
            await alerts.wait_until(lambda ps: len(ps) >= 5, "BACK_IN_STOCK and LOW_STOCK")
            assert _kinds(alerts.payloads) == [
                (empty, "OUT_OF_STOCK", None, 0),
                (sku, "LOW_STOCK", 10, 3),
                (sku, "OUT_OF_STOCK", 3, 0),
                (empty, "BACK_IN_STOCK", 0, 2),
                (empty, "LOW_STOCK", 0, 2),
            ]
            assert {(p["channelCode"], p["lowStockThreshold"]) for p in alerts.payloads} == {(channel, 5)}
        # an unknown channel is refused at once
        async with AlertSubscriber(server.ws_url, ALERTS_SUB, {"channel": "NOPE"}, api_key=key) as refused:
            await refused.wait_until(lambda ps: refused.error is not None, "the refusal")
            assert "no channel 'NOPE'" in str(refused.error)
