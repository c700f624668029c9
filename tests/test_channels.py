"""Channels over HTTP: the rules explained in availability, ring-fences, and reserve held to the figure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.services import integrity
from app.settings import Settings
from tests.conftest import Api
from tests.helpers import COMMIT, RELEASE, catalogue, event, level, receive, record, reserve

UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  channels { code name locationCodes safetyBufferUnits safetyBufferPercent allocationPercent allocationCap
             outOfStockThreshold backorderLimit version }
  userErrors { code message field } } }"""
FENCES = """mutation($channel: String!, $input: [RingFenceInput!]!) {
  setRingFences(channelCode: $channel, input: $input) {
  count userErrors { code message field } } }"""
CHANNEL_AVAILABILITY = """query($skus: [String!]!, $channel: String) {
  availability(skuCodes: $skus, channelCode: $channel) {
  skuCode channelCode available oversold version locations { locationCode available }
  explain { pool mine base incoming onHandPart backorderable expectedAt steps { rule unitsTaken figureAfter } } } }"""

WEB = {
    "code": "WEB",
    "name": "Web shop",
    "locationCodes": ["WH-1", "WH-2"],
    "safetyBufferUnits": 2,
    "safetyBufferPercent": 10,
    "allocationPercent": 60,
    "allocationCap": 25,
    "outOfStockThreshold": 3,
    "backorderLimit": 5,
}


async def _setup(api: Api, *channels: dict[str, Any]) -> None:
    await catalogue(api, locations=[("WH-1", 10), ("WH-2", 20)])
    await receive(api, "SKU-1", "WH-1", 30)
    await receive(api, "SKU-1", "WH-2", 20)
    result = await record(api, event("INCOMING", "SKU-1", "WH-2", 8, expectedAt="2099-01-10T00:00:00+00:00"))
    assert result["userErrors"] == []
    data = await api.ok(UPSERT_CHANNELS, input=list(channels or (WEB,)))
    assert data["upsertChannels"]["userErrors"] == []


async def _figure(api: Api, channel: str | None = "WEB") -> dict[str, Any]:
    data = await api.ok(CHANNEL_AVAILABILITY, skus=["SKU-1"], channel=channel)
    row: dict[str, Any] = data["availability"][0]
    return row


def _steps(row: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(s["rule"], s["unitsTaken"], s["figureAfter"]) for s in row["explain"]["steps"]]


async def test_channel_figure_applies_every_rule_in_order_and_explains_it(api: Api) -> None:
    await _setup(api)
    row = await _figure(api)
    # pool 50; -2 units; -ceil(10% of 50)=5; 60% of 50 = 30; cap 25; threshold 3 passes; +min(5, 8) backorder
    assert (row["channelCode"], row["available"]) == ("WEB", 30)
    assert _steps(row) == [
        ("SAFETY_BUFFER_UNITS", 2, 48),
        ("SAFETY_BUFFER_PERCENT", 5, 43),
        ("ALLOCATION_PERCENT", 13, 30),
        ("ALLOCATION_CAP", 5, 25),
        ("OUT_OF_STOCK_THRESHOLD", 0, 25),
        ("BACKORDER", -5, 30),
    ]
    explain = row["explain"]
    assert (explain["pool"], explain["base"], explain["mine"], explain["incoming"]) == (50, 50, 0, 8)
    assert (explain["onHandPart"], explain["backorderable"]) == (25, 5)
    assert explain["expectedAt"].startswith("2099-01-10")
    assert [lv["locationCode"] for lv in row["locations"]] == ["WH-1", "WH-2"]
    plain = await _figure(api, None)
    assert (plain["available"], plain["explain"]) == (50, None)


async def test_rule_changes_and_location_links_move_the_version(api: Api) -> None:
    await _setup(api)
    first = await _figure(api)
    omitted = {k: v for k, v in WEB.items() if k != "allocationCap"}
    data = await api.ok(UPSERT_CHANNELS, input=[{**omitted, "locationCodes": ["WH-1"]}])
    assert data["upsertChannels"]["channels"][0]["locationCodes"] == ["WH-1"]
    # cap kept (omitted = stored value); only WH-1: pool 30 → 28 → -3 → 25 → floor(18) → 18; no incoming at WH-1
    second = await _figure(api)
    assert second["available"] == 18
    assert second["version"] > first["version"]
    assert data["upsertChannels"]["channels"][0]["allocationCap"] == 25


async def test_ring_fenced_units_are_invisible_to_other_channels(api: Api) -> None:
    pos = {"code": "POS", "name": "Store tills", "locationCodes": ["WH-1"]}
    await _setup(api, WEB, pos)
    before = (await _figure(api))["version"]
    data = await api.ok(FENCES, channel="POS", input=[{"skuCode": "SKU-1", "locationCode": "WH-1", "units": 10}])
    assert data["setRingFences"] == {"count": 1, "userErrors": []}
    row = await _figure(api)
    # pool 20 + 20 = 40: -2, -4, floor(24) = 24, cap 25 takes nothing, +5 backorder
    assert (row["explain"]["pool"], row["available"]) == (40, 29)
    assert row["version"] > before
    assert (await _figure(api, "POS"))["available"] == 30  # the fence stays in its owner's pool
    # a reserve under WEB cannot reach the fenced units at WH-1
    taken = await reserve(api, [{"skuCode": "SKU-1", "quantity": 21, "locationCode": "WH-1"}], channelCode="WEB")
    assert [e["code"] for e in taken["userErrors"]] == ["INSUFFICIENT_STOCK"]
    taken = await reserve(api, [{"skuCode": "SKU-1", "quantity": 20, "locationCode": "WH-1"}], channelCode="WEB")
    assert taken["userErrors"] == []
    assert (await level(api, "SKU-1", "WH-1"))["available"] == 10


async def test_reserve_under_a_channel_takes_at_most_its_figure_and_backorders_beyond_stock(api: Api) -> None:
    await _setup(api)
    too_many = await reserve(api, [{"skuCode": "SKU-1", "quantity": 31}], channelCode="WEB")
    assert [e["code"] for e in too_many["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert "may sell 30" in too_many["userErrors"][0]["message"]
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 27}], channelCode="WEB")
    assert result["userErrors"] == []
    # 25 from stock (priority order: WH-1 first), 2 backordered where the incoming units are expected
    assert result["reservation"]["lines"] == [
        {"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": 25},
        {"skuCode": "SKU-1", "locationCode": "WH-2", "quantity": 2},
    ]
    rows = await api.sql("SELECT location_id, quantity, backordered FROM reservation_lines ORDER BY location_id")
    assert [tuple(r) for r in rows] == [(1, 25, 0), (2, 0, 2)]
    assert [tuple(r) for r in await api.sql("SELECT reserved, backordered FROM channel_holds")] == [(25, 2)]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 25
    assert (await level(api, "SKU-1", "WH-2"))["reserved"] == 0
    row = await _figure(api)
    # base 25 + mine 25 = 50 → 25 as before, less the 25 it holds → 0; backorder 5 - 2 = 3 left
    assert (row["explain"]["mine"], row["explain"]["onHandPart"], row["available"]) == (25, 0, 3)
    assert ("OWN_RESERVATIONS", 25, 0) in _steps(row)
    refused = await reserve(api, [{"skuCode": "SKU-1", "quantity": 4}], channelCode="WEB")
    assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_STOCK"]

    released = await api.ok(RELEASE, id=result["reservation"]["id"])
    assert released["releaseReservation"]["reservation"]["status"] == "RELEASED"
    assert [tuple(r) for r in await api.sql("SELECT reserved, backordered FROM channel_holds")] == [(0, 0)]
    assert (await _figure(api))["available"] == 30
    assert await integrity.check(api.ctx) == []


async def test_commit_under_a_channel_moves_stock_and_backorder_into_committed(api: Api) -> None:
    await _setup(api)
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 27}], channelCode="WEB")
    committed = await api.ok(COMMIT, id=result["reservation"]["id"], orderRef="order-1")
    assert committed["commitReservation"]["reservation"]["status"] == "COMMITTED"
    # the order still waits for its 2 backordered units: they stay counted against the limit and incoming
    assert [tuple(r) for r in await api.sql("SELECT reserved, backordered FROM channel_holds")] == [(0, 2)]
    wh1, wh2 = await level(api, "SKU-1", "WH-1"), await level(api, "SKU-1", "WH-2")
    assert (wh1["reserved"], wh1["committed"], wh2["committed"], wh2["incoming"]) == (0, 25, 2, 8)
    assert [tuple(r) for r in await api.sql("SELECT backordered FROM stock_levels ORDER BY location_id")] == [
        (0,),
        (2,),
    ]
    assert (await _figure(api))["explain"]["backorderable"] == 3
    # the incoming units arrive: the backorder is covered, the limit and the incoming are free again
    await receive(api, "SKU-1", "WH-2", 8)
    assert [tuple(r) for r in await api.sql("SELECT reserved, backordered FROM channel_holds")] == [(0, 0)]
    assert [
        tuple(r)
        for r in await api.sql("SELECT backordered, backorder_open FROM reservation_lines ORDER BY location_id")
    ] == [
        (0, 0),
        (2, 0),
    ]
    wh2 = await level(api, "SKU-1", "WH-2")
    assert (wh2["onHand"], wh2["committed"], wh2["incoming"], wh2["available"]) == (28, 2, 0, 26)
    assert await integrity.check(api.ctx) == []


async def test_unknown_channel_and_unlinked_location_are_refused(api: Api) -> None:
    await _setup(api, {**WEB, "locationCodes": ["WH-1"]})
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 1}], channelCode="NOPE")
    assert [e["code"] for e in result["userErrors"]] == ["UNKNOWN_CHANNEL"]
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 1, "locationCode": "WH-2"}], channelCode="WEB")
    assert [e["code"] for e in result["userErrors"]] == ["UNKNOWN_LOCATION"]
    response = await api.raw(CHANNEL_AVAILABILITY, skus=["SKU-1"], channel="NOPE")
    assert response.json()["errors"][0]["message"] == "no channel 'NOPE'"
    bad = await api.ok(UPSERT_CHANNELS, input=[{**WEB, "allocationPercent": 120, "locationCodes": ["WH-9"]}])
    assert [e["code"] for e in bad["upsertChannels"]["userErrors"]] == ["INVALID_INPUT"]
    assert bad["upsertChannels"]["userErrors"][0]["field"] == ["input", "0", "allocationPercent"]
    assert await api.sql("SELECT reserved FROM channel_holds") == []


@asynccontextmanager
async def _second_app(api: Api) -> AsyncIterator[Api]:
    """Another app on the same database, with its own connection pool: a second process, in effect."""
    app = create_app(Settings(database_url=api.ctx.settings.database_url, broadcast_url="memory://"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://other") as client:
            yield Api(client, app.state.runtime.ctx, api.key)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("rule", "limit"),
    [({"allocationCap": 10}, 10), ({"allocationPercent": 10}, 12)],  # 10% of the 120 units pooled: 12
    ids=["cap", "share"],
)
async def test_concurrent_reserves_never_exceed_the_channel_figure(api: Api, rule: dict[str, Any], limit: int) -> None:
    await catalogue(api, locations=[("WH-1", 10), ("WH-2", 20)])
    await receive(api, "SKU-1", "WH-1", 60)
    await receive(api, "SKU-1", "WH-2", 60)
    data = await api.ok(
        UPSERT_CHANNELS, input=[{"code": "WEB", "name": "Web", "locationCodes": ["WH-1", "WH-2"], **rule}]
    )
    assert data["upsertChannels"]["userErrors"] == []
    # 60 buyers at once through two apps (two connection pools) on PostgreSQL, 1 or 2 units each: stock
    # is plentiful, only the channel's figure (over several rows and the channel's own holds) stops them,
    # so only the guard row can keep them to the limit
    async with _second_app(api) as other:
        results = await asyncio.gather(
            *(
                reserve((api, other)[i % 2], [{"skuCode": "SKU-1", "quantity": 1 + i % 2}], channelCode="WEB")
                for i in range(60)
            )
        )
    held = sum(sum(ln["quantity"] for ln in r["reservation"]["lines"]) for r in results if r["reservation"])
    refused = [r for r in results if r["reservation"] is None]
    # the last unit may be left when only 2-unit buyers remained for it
    assert held == limit or (held == limit - 1 and refused), held
    assert len(refused) >= 60 - limit
    assert {e["code"] for r in refused for e in r["userErrors"]} == {"INSUFFICIENT_STOCK"}
    assert [tuple(r) for r in await api.sql("SELECT reserved, backordered FROM channel_holds")] == [(held, 0)]
    reserved = await api.sql("SELECT sum(reserved) FROM stock_levels")
    assert int(reserved[0][0]) == held
    assert (await _figure(api))["available"] == limit - held
    assert await integrity.check(api.ctx) == []
