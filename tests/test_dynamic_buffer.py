"""The buffer that follows demand, over the API on PostgreSQL: the figure, `explain`, pushes and the lag
follow a burst of sales and a change of lag; and preorders before a SKU's launch (issue 18)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from tests.channel_endpoint import Endpoint, serve
from tests.conftest import Api
from tests.helpers import T0, catalogue, event, receive, record, reserve

UPSERT = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  channels { code syncLagSeconds dynamicBufferFactor dynamicBufferBand } userErrors { code field message } } }"""
FIGURE = """query($skus: [String!]!, $channel: String) { availability(skuCodes: $skus, channelCode: $channel) {
  skuCode available version explain { dynamicBuffer preorderable backorderable expectedAt onHandPart
  steps { rule unitsTaken figureAfter } } } }"""
DEMAND = """query($channel: String!, $skus: [String!]!) { channelDemand(channelCode: $channel, skuCodes: $skus) {
  skuCode velocityPerHour channelVelocityPerHour configuredLagSeconds measuredLagSeconds lagSeconds
  target applied } }"""
LAUNCH = (
    """mutation($input: [SkuLaunchInput!]!) { setSkuLaunches(input: $input) { count userErrors { code field } } }"""
)
RESERVE_LINES = """mutation($input: ReserveInput!) { reserve(input: $input) {
  reservation { id lines { skuCode quantity backordered preordered expectedAt } } userErrors { code message } } }"""
SECRET = "s3cret"
# a marketplace channel at WH-1 with a dynamic buffer (a lag of 600 s, a band of 2)
MKT = {
    "code": "MKT",
    "name": "Marketplace",
    "locationCodes": ["WH-1"],
    "syncLagSeconds": 600,
    "dynamicBufferFactor": 1.0,
    "dynamicBufferBand": 2,
}


class Clock:
    """The service's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0 + timedelta(days=1)

    def __call__(self) -> Any:
        return self.now


async def _figure(api: Api, sku: str = "SKU-1", channel: str = "MKT") -> dict[str, Any]:
    data = await api.ok(FIGURE, skus=[sku], channel=channel)
    row: dict[str, Any] = data["availability"][0]
    return row


def _steps(row: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(s["rule"], s["unitsTaken"], s["figureAfter"]) for s in row["explain"]["steps"]]


async def _until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 15) -> None:
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 (the sweeper and publisher run on their own: poll them)
            await asyncio.sleep(0.05)
    assert await check(), what


async def _sold(api: Api, quantity: int) -> None:
    result = await record(api, event("SOLD", "SKU-1", "WH-1", quantity, minutes=24 * 60))
    assert result["userErrors"] == [], result


async def test_figure_explain_and_pushes_follow_a_burst_of_sales_and_a_change_of_lag(api: Api) -> None:
    clock = Clock()
    api.ctx.clock = clock
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 100)
    async with serve(Endpoint(SECRET)) as endpoint:
        mkt = {**MKT, "endpointUrl": endpoint.url, "endpointSecret": SECRET}
        data = await api.ok(UPSERT, input=[mkt])
        assert data["upsertChannels"]["userErrors"] == []
        assert data["upsertChannels"]["channels"][0]["syncLagSeconds"] == 600
        quiet = await _figure(api)
        assert quiet["available"] == 100 and quiet["explain"]["dynamicBuffer"] == 0
        assert _steps(quiet) == []
        await endpoint.wait_until(lambda: endpoint.shows.get("SKU-1", (0, 0))[1] == 100, "the first push")

        # a burst: 60 sold at once. rate = 60 x ln2 / 3600 s; x 600 s lag = 6.93 -> a buffer of 7
        await _sold(api, 60)
        burst = await _figure(api)
        assert burst["available"] == 33
        assert _steps(burst) == [("DYNAMIC_BUFFER", 7, 33)]
        [d] = (await api.ok(DEMAND, channel="MKT", skus=["SKU-1"]))["channelDemand"]
        assert (d["target"], d["applied"], d["lagSeconds"]) == (7, 7, 600)
        assert round(d["velocityPerHour"], 2) == round(60 * 0.6931471805599453, 2)
        await endpoint.wait_until(lambda: endpoint.shows["SKU-1"][1] == 33, "the buffered figure pushed")

        # one more unit moves the target by less than the band (2): the buffer stays, the figure only loses it
        await _sold(api, 1)
        wobble = await _figure(api)
        assert (wobble["available"], wobble["explain"]["dynamicBuffer"]) == (32, 7)

        # the channel polls less often now: twice the lag, twice the buffer, at once, and pushed
        data = await api.ok(UPSERT, input=[{**mkt, "syncLagSeconds": 1200}])
        assert data["upsertChannels"]["userErrors"] == []
        slower = await _figure(api)
        assert _steps(slower) == [("DYNAMIC_BUFFER", 15, 24)]  # 61 x ln2 / 3600 x 1200 = 14.09 -> 15
        assert slower["version"] > wobble["version"]
        await endpoint.wait_until(lambda: endpoint.shows["SKU-1"][1] == 24, "the new buffer pushed")

        # an hour later demand has halved: target 61/2 x ln2 / 3600 x 1200 = 7.05 -> 8, and the sweeper lowers
        # the buffer by whole bands of 2, never below the target: 15 -> 9
        clock.now += timedelta(hours=1)

        async def lowered() -> bool:
            return (await _figure(api))["explain"]["dynamicBuffer"] < 15

        await _until(lowered, "the sweeper to lower the buffer")
        calm = await _figure(api)
        assert _steps(calm) == [("DYNAMIC_BUFFER", 9, 30)]
        assert calm["version"] > slower["version"]
        await endpoint.wait_until(lambda: endpoint.shows["SKU-1"][1] == 30, "the lowered buffer pushed")
        rows = await api.sql("SELECT applied, target FROM dynamic_buffers")
        assert [tuple(r) for r in rows] == [(9, 8)]


async def test_the_measured_lag_of_a_failing_endpoint_raises_the_buffer(api: Api) -> None:
    clock = Clock()
    api.ctx.clock = clock
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 100)
    await _sold(api, 60)  # demand before the channel exists counts too
    async with serve(Endpoint(SECRET, fail_first=1)) as endpoint:
        mkt = {
            "code": "MKT",
            "name": "Marketplace",
            "locationCodes": ["WH-1"],
            "dynamicBufferFactor": 1.0,
            "endpointUrl": endpoint.url,
            "endpointSecret": SECRET,
        }
        assert (await api.ok(UPSERT, input=[mkt]))["upsertChannels"]["userErrors"] == []
        # no lag configured or measured yet: no buffer
        assert (await _figure(api))["explain"]["dynamicBuffer"] == 0
        async with asyncio.timeout(15):
            await endpoint.first_failure.wait()
        clock.now += timedelta(seconds=599)  # the endpoint is down for ten minutes
        endpoint.release_first_failure.set()

        async def failure_recorded() -> bool:
            return bool(await api.sql("SELECT 1 FROM channel_publications WHERE attempts > 0"))

        await _until(failure_recorded, "the failed push recorded")
        clock.now += timedelta(seconds=1)  # its retry is due

        async def measured() -> bool:
            [d] = (await api.ok(DEMAND, channel="MKT", skus=["SKU-1"]))["channelDemand"]
            return d["measuredLagSeconds"] is not None

        await _until(measured, "a lag sample")
        [d] = (await api.ok(DEMAND, channel="MKT", skus=["SKU-1"]))["channelDemand"]
        # from the first (failed) push to the acknowledgement of its retry
        assert d["measuredLagSeconds"] == 600 and d["lagSeconds"] == 600 and d["configuredLagSeconds"] is None
        # the 60 sold ten minutes ago weigh 2^(-600/3600) as much: 60 x 0.891 x ln2 / 3600 x 600 = 6.17 -> 7
        assert (d["target"], d["applied"]) == (7, 7)
        figure = await _figure(api)
        assert _steps(figure) == [("DYNAMIC_BUFFER", 7, 33)]
        await endpoint.wait_until(lambda: endpoint.shows.get("SKU-1", (0, 0))[1] == 33, "the buffered figure")
        [(samples, waiting_since)] = [
            tuple(r) for r in await api.sql("SELECT samples, waiting_since FROM channel_sync_lag")
        ]
        assert samples >= 1 and waiting_since is None


async def test_reservations_are_demand_under_their_channel_and_bad_rules_are_refused(api: Api) -> None:
    api.ctx.clock = Clock()
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 50)
    mkt = {"code": "MKT", "name": "Marketplace", "locationCodes": ["WH-1"], "syncLagSeconds": 3600}
    assert (await api.ok(UPSERT, input=[{**mkt, "dynamicBufferFactor": 1.0}]))["upsertChannels"]["userErrors"] == []
    held = await reserve(api, [{"skuCode": "SKU-1", "quantity": 4}], channelCode="MKT")
    assert held["userErrors"] == []
    await reserve(api, [{"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": 2}])
    [d] = (await api.ok(DEMAND, channel="MKT", skus=["SKU-1"]))["channelDemand"]
    # 6 units an hour-long lag: 6 x ln2 = 4.16 -> 5; 4 of them on this channel
    assert round(d["channelVelocityPerHour"], 3) == round(4 * 0.6931471805599453, 3)
    assert (d["target"], d["applied"]) == (5, 5)
    assert (await _figure(api))["available"] == 50 - 6 - 5 + 0  # mine (4) back in the base, then taken
    rows = await api.sql("SELECT channel_code, round(units::numeric, 3) FROM sku_demand ORDER BY channel_code")
    assert [(r[0], float(r[1])) for r in rows] == [("", 2.0), ("MKT", 4.0)]

    bad = {**mkt, "dynamicBufferFactor": -1, "dynamicBufferBand": 0, "syncLagSeconds": -5}
    errors = (await api.ok(UPSERT, input=[bad]))["upsertChannels"]["userErrors"]
    assert {(e["code"], e["field"][-1]) for e in errors} == {
        ("INVALID_INPUT", "dynamicBufferFactor"),
        ("INVALID_INPUT", "dynamicBufferBand"),
        ("INVALID_INPUT", "syncLagSeconds"),
    }
    stored = await api.sql("SELECT sync_lag_seconds, dynamic_buffer_band FROM channels")
    assert [tuple(r) for r in stored] == [(3600.0, 1)]


async def test_preorders_before_launch_up_to_the_limit_against_incoming(api: Api) -> None:
    clock = Clock()
    api.ctx.clock = clock
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)  # on hand, but not to be sold before launch
    expected = (clock.now + timedelta(days=20)).isoformat()
    assert (await record(api, event("INCOMING", "SKU-1", "WH-1", 30, minutes=24 * 60, expectedAt=expected)))[
        "userErrors"
    ] == []
    channels = [{"code": code, "name": code, "locationCodes": ["WH-1"], "backorderLimit": 2} for code in ("WEB", "MKT")]
    assert (await api.ok(UPSERT, input=channels))["upsertChannels"]["userErrors"] == []
    launch = (clock.now + timedelta(days=7)).isoformat()
    data = await api.ok(LAUNCH, input=[{"skuCode": "SKU-1", "launchAt": launch, "preorderLimit": 5}])
    assert data["setSkuLaunches"] == {"count": 1, "userErrors": []}

    before = await _figure(api, channel="WEB")
    assert before["available"] == 5
    assert _steps(before) == [("NOT_LAUNCHED", 10, 0), ("PREORDER", -5, 5)]
    assert before["explain"]["preorderable"] == 5 and before["explain"]["expectedAt"].startswith(expected[:19])

    first = await api.ok(
        RESERVE_LINES,
        input={"lines": [{"skuCode": "SKU-1", "quantity": 3}], "idempotencyKey": "p1", "channelCode": "WEB"},
    )
    assert first["reserve"]["userErrors"] == []
    [line] = first["reserve"]["reservation"]["lines"]
    assert (line["quantity"], line["backordered"], line["preordered"]) == (3, 3, 3)
    assert line["expectedAt"].startswith(expected[:19])
    # the limit is the SKU's, over every channel: 2 left on MKT too, and a third is refused
    assert (await _figure(api, channel="MKT"))["available"] == 2
    over = await api.ok(
        RESERVE_LINES,
        input={"lines": [{"skuCode": "SKU-1", "quantity": 3}], "idempotencyKey": "p2", "channelCode": "MKT"},
    )
    assert [e["code"] for e in over["reserve"]["userErrors"]] == ["INSUFFICIENT_STOCK"]
    rows = await api.sql("SELECT preordered, preorder_limit FROM skus")
    assert [tuple(r) for r in rows] == [(3, 5)]

    # released: the preorders count no more
    rid = first["reserve"]["reservation"]["id"]
    released = await api.ok("mutation($id: ID!) { releaseReservation(id: $id) { userErrors { code } } }", id=rid)
    assert released["releaseReservation"]["userErrors"] == []
    assert [tuple(r) for r in await api.sql("SELECT preordered FROM skus")] == [(0,)]
    assert (await _figure(api, channel="MKT"))["available"] == 5

    # after launch the usual rules: stock (10) and the channel's backorder limit (2)
    clock.now += timedelta(days=8)
    launched = await _figure(api, channel="WEB")
    assert launched["available"] == 12
    assert _steps(launched) == [("BACKORDER", -2, 12)]


async def test_setting_no_launches_changes_nothing(api: Api) -> None:
    """An empty input was an unexpected error (found by tests/test_fuzz_inputs.py): it sets nothing."""
    body = (await api.raw("mutation { setSkuLaunches(input: []) { __typename } }")).json()
    assert "errors" not in body, body
    assert await api.sql("SELECT count(*) FROM outbox") == [(0,)]


ROUTE_AND_RESERVE = """mutation($input: RouteOrderInput!) { routeAndReserve(input: $input) {
  reservation { id lines { skuCode quantity backordered preordered } } userErrors { code message } } }"""


async def test_preorders_routed_and_reserved_are_given_back_on_release(api: Api) -> None:
    """routeAndReserve under a channel before launch sells preorders like reserve does: its lines say so
    and a release gives them back to the SKU's limit (before, the line showed 0 and the units stayed
    counted in skus.preordered after the release)."""
    clock = Clock()
    api.ctx.clock = clock
    await catalogue(api)
    expected = (clock.now + timedelta(days=20)).isoformat()
    assert (await record(api, event("INCOMING", "SKU-1", "WH-1", 30, minutes=24 * 60, expectedAt=expected)))[
        "userErrors"
    ] == []
    web = [{"code": "WEB", "name": "WEB", "locationCodes": ["WH-1"], "backorderLimit": 2}]
    assert (await api.ok(UPSERT, input=web))["upsertChannels"]["userErrors"] == []
    launch = (clock.now + timedelta(days=7)).isoformat()
    await api.ok(LAUNCH, input=[{"skuCode": "SKU-1", "launchAt": launch, "preorderLimit": 5}])

    routed = await api.ok(
        ROUTE_AND_RESERVE,
        input={"orderRef": "PRE-1", "channelCode": "WEB", "lines": [{"skuCode": "SKU-1", "quantity": 3}]},
    )
    payload = routed["routeAndReserve"]
    assert payload["userErrors"] == []
    [line] = payload["reservation"]["lines"]
    assert (line["quantity"], line["backordered"], line["preordered"]) == (3, 3, 3)
    assert [tuple(r) for r in await api.sql("SELECT preordered FROM skus WHERE code = 'SKU-1'")] == [(3,)]

    rid = payload["reservation"]["id"]
    released = await api.ok("mutation($id: ID!) { releaseReservation(id: $id) { userErrors { code } } }", id=rid)
    assert released["releaseReservation"]["userErrors"] == []
    assert [tuple(r) for r in await api.sql("SELECT preordered FROM skus WHERE code = 'SKU-1'")] == [(0,)]
