"""Publication to a channel's endpoint: a real local HTTP server that fails its first responses.

The worker is the one the app's lifespan runs (as in production), pushing over real sockets with httpx.
The endpoint ends with the latest value of every SKU, every signature checks out, nothing older than a
value already acknowledged is ever sent, and `channelPublications` shows the mismatch while it lasts.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from app.services import channel_publication
from tests.channel_endpoint import Endpoint, serve
from tests.conftest import Api
from tests.helpers import catalogue, event, receive, record

SECRET = "endpoint-secret"
UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  channels { code endpointUrl } userErrors { code message field } } }"""
FIGURES = """query($skus: [String!]!) { availability(skuCodes: $skus, channelCode: "WEB") {
  skuCode available version } }"""
PUBLICATIONS = """query($outOfSyncOnly: Boolean! = false) {
  channelPublications(channelCode: "WEB", outOfSyncOnly: $outOfSyncOnly) {
  skuCode ackedVersion ackedAvailable currentVersion currentAvailable inSync attempts lastError } }"""


async def _figures(api: Api) -> dict[str, tuple[int, int]]:
    rows = (await api.ok(FIGURES, skus=["SKU-1", "SKU-2"]))["availability"]
    return {r["skuCode"]: (r["version"], r["available"]) for r in rows}


async def _publications(api: Api, out_of_sync_only: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (await api.ok(PUBLICATIONS, outOfSyncOnly=out_of_sync_only))["channelPublications"]
    return rows


async def _until_in_sync(api: Api) -> list[dict[str, Any]]:
    # the endpoint answers before the worker records the acknowledgement: wait for the record too
    async with asyncio.timeout(30):
        for _ in itertools.count():
            if not await _publications(api, out_of_sync_only=True):
                break
            await asyncio.sleep(0.05)
    return await _publications(api)


async def _sold(api: Api, sku: str, quantity: int) -> None:
    assert (await record(api, event("SOLD", sku, "WH-1", quantity)))["userErrors"] == []


async def test_the_endpoint_ends_with_the_latest_values_after_failing_its_first_responses(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    await receive(api, "SKU-1", "WH-1", 20)
    await receive(api, "SKU-2", "WH-1", 5)
    async with serve(Endpoint(SECRET, fail_first=3)) as endpoint:
        web = {"code": "WEB", "name": "Web", "locationCodes": ["WH-1"], "allocationCap": 15}
        data = await api.ok(UPSERT_CHANNELS, input=[{**web, "endpointUrl": endpoint.url, "endpointSecret": SECRET}])
        assert data["upsertChannels"]["userErrors"] == []
        async with asyncio.timeout(30):
            await endpoint.first_failure.wait()
        # the first push (SKU-1 15 by the cap, SKU-2 5) is being refused; stock moves meanwhile
        assert {i["sku"]: i["available"] for i in endpoint.received[0].body["items"]} == {"SKU-1": 15, "SKU-2": 5}
        await _sold(api, "SKU-1", 8)  # 12 left: below the cap now
        await _sold(api, "SKU-2", 5)  # sold out
        # what the endpoint was told (nothing yet) differs from what it should show: visible
        mismatch = {p["skuCode"]: p for p in await _publications(api, out_of_sync_only=True)}
        assert {s: (p["ackedAvailable"], p["currentAvailable"]) for s, p in mismatch.items()} == {
            "SKU-1": (None, 12),
            "SKU-2": (None, 0),
        }
        endpoint.release_first_failure.set()

        latest = await _figures(api)
        await endpoint.wait_until(lambda: endpoint.shows == latest, f"the endpoint to show {latest}")
        statuses = [r.status for r in endpoint.received]
        assert statuses[:3] == [503, 503, 503]
        assert statuses[3:] == [200] * (len(statuses) - 3)
        assert all(r.signature_ok for r in endpoint.received)
        # retried with the latest value only (one item per SKU per push), both SKUs in one batch
        first_ack = endpoint.received[3].body
        assert {i["sku"]: (i["version"], i["available"]) for i in first_ack["items"]} == latest
        for r in endpoint.received:
            skus = [i["sku"] for i in r.body["items"]]
            assert len(skus) == len(set(skus)), r.body
        assert endpoint.older_than_acknowledged == []
        # the worker remembers what was acknowledged, and the API says it is in step again
        synced = await _until_in_sync(api)
        assert [(p["skuCode"], p["ackedAvailable"], p["inSync"], p["attempts"], p["lastError"]) for p in synced] == [
            ("SKU-1", 12, True, 0, None),
            ("SKU-2", 0, True, 0, None),
        ]
        rows = await api.sql("SELECT sku_id, acked_version, acked_available FROM channel_publications ORDER BY sku_id")
        assert [tuple(r) for r in rows] == [(1, latest["SKU-1"][0], 12), (2, latest["SKU-2"][0], 0)]

        # a later change is a delta: only the SKU that moved is pushed
        pushes = len(endpoint.received)
        await receive(api, "SKU-1", "WH-1", 10)  # 22 on hand: the cap shows 15 again
        latest = await _figures(api)
        await endpoint.wait_until(lambda: endpoint.shows == latest, "the endpoint to show the restock")
        assert [[i["sku"] for i in r.body["items"]] for r in endpoint.received[pushes:]] == [["SKU-1"]]
        assert endpoint.shows["SKU-1"][1] == 15
        assert endpoint.older_than_acknowledged == []
        await _until_in_sync(api)


async def test_a_push_is_signed_over_its_exact_bytes() -> None:
    body = b'{"channel":"WEB","items":[]}'
    signature = channel_publication.sign(SECRET, body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert channel_publication.verify(SECRET, body, signature)
    assert not channel_publication.verify(SECRET, body + b" ", signature)
    assert not channel_publication.verify("another secret", body, signature)


async def test_an_endpoint_needs_a_secret(api: Api) -> None:
    await catalogue(api)
    web = {"code": "WEB", "name": "Web", "locationCodes": ["WH-1"], "endpointUrl": "http://127.0.0.1:9/stock"}
    data = await api.ok(UPSERT_CHANNELS, input=[web])
    errors = data["upsertChannels"]["userErrors"]
    assert [(e["code"], e["field"]) for e in errors] == [("INVALID_INPUT", ["input", "0", "endpointSecret"])]
    assert await api.sql("SELECT code FROM channels") == []
    # with one it is stored; a later upsert that omits the secret keeps the stored one
    for item in ({**web, "endpointSecret": SECRET}, {**web, "name": "Web shop"}):
        assert (await api.ok(UPSERT_CHANNELS, input=[item]))["upsertChannels"]["userErrors"] == []
    assert [tuple(r) for r in await api.sql("SELECT name, endpoint_secret FROM channels")] == [("Web shop", SECRET)]


async def test_a_new_endpoint_is_told_everything(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    await receive(api, "SKU-1", "WH-1", 4)
    await receive(api, "SKU-2", "WH-1", 6)
    async with serve(Endpoint(SECRET)) as first, serve(Endpoint("second-secret")) as second:
        web = {"code": "WEB", "name": "Web", "locationCodes": ["WH-1"], "endpointSecret": SECRET}
        data = await api.ok(UPSERT_CHANNELS, input=[{**web, "endpointUrl": first.url}])
        assert data["upsertChannels"]["userErrors"] == []
        latest = await _figures(api)
        await first.wait_until(lambda: first.shows == latest, "the first endpoint")
        await _until_in_sync(api)
        moved = {**web, "endpointUrl": second.url, "endpointSecret": "second-secret"}
        assert (await api.ok(UPSERT_CHANNELS, input=[moved]))["upsertChannels"]["userErrors"] == []
        # nothing changed in stock, yet the new endpoint gets every SKU (with the channel's new version)
        latest = await _figures(api)
        await second.wait_until(lambda: second.shows == latest, "the second endpoint")
        assert {s: v[1] for s, v in second.shows.items()} == {"SKU-1": 4, "SKU-2": 6}
        assert all(r.signature_ok for r in first.received + second.received)
        await _until_in_sync(api)
