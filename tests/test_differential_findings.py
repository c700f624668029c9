"""Disagreements the differential test (tests/test_differential.py) found between the service and the
contract, each reduced to its smallest reproduction, on PostgreSQL.

Each test fails without its fix (named in its docstring).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import Api, _truncate, create_test_key
from tests.helpers import LEVELS, catalogue, event, record


@pytest.fixture
async def pg_api(postgres_url: str) -> AsyncIterator[Api]:
    await _truncate(postgres_url)
    key = await create_test_key(postgres_url)
    app = create_app(Settings(database_url=postgres_url, broadcast_url="memory://"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, app.state.runtime.ctx, key)


async def test_an_event_that_changes_nothing_on_a_new_position_answers_no_version(pg_api: Api) -> None:
    """F1 (fix: app/services/events.py `_answered`). Versions start at 1 (contract, StockLevel.version);
    0 is a version no StockLevel ever shows.

    REPAIRED 5 where nothing was ever recorded clips at 0 (drift 5) and changes nothing: the position
    does not exist for stockLevels, so the event's `version` is null, not 0.
    """
    await catalogue(pg_api, ["SKU-1"], [("WH-1", 10)])
    repaired = event("REPAIRED", "SKU-1", "WH-1", 5)
    result = await record(pg_api, repaired)
    assert result["userErrors"] == []
    assert (await pg_api.ok(LEVELS, skus=["SKU-1"], locs=["WH-1"]))["stockLevels"] == []
    assert result["results"] == [{"index": 0, "status": "APPLIED", "version": None, "drift": 5}]
    # a repeat answers the version its first occurrence recorded: none either
    again = await record(pg_api, repaired)
    assert again["results"] == [{"index": 0, "status": "DUPLICATE", "version": None, "drift": 0}]


CHANNEL_FIGURE = """query($skus: [String!]!, $channel: String) {
  availability(skuCodes: $skus, channelCode: $channel) { skuCode available version } }"""
UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  channels { code } userErrors { code message field } } }"""
RESERVE_UNDER = """mutation($input: ReserveInput!) { reserve(input: $input) {
  reservation { id lines { locationCode quantity backordered } } userErrors { code } } }"""
RELEASE_IT = """mutation($id: ID!) { releaseReservation(id: $id) { reservation { status } userErrors { code } } }"""


async def test_a_backorder_under_one_channel_moves_the_version_of_every_channel_it_changes(pg_api: Api) -> None:
    """F2, seed 2 of the differential test (fix: app/db/stock.py `_note_promises`, read in
    app/services/channels.py `_inputs`). Contract: Availability.version moves whenever the figure moves.

    WEB and POS sell from WH-1, which has no stock and 1 unit incoming. A backorder promises an expected
    unit to one channel only (README, Channels), so POS taking it as a backorder takes WEB's figure from 1
    to 0, and POS releasing it gives it back; the promise changes no StockLevel field (no ledger row, no
    position version), and WEB's own counters do not move either: WEB's version stayed where it was.
    """
    await catalogue(pg_api, ["SKU-1"], [("WH-1", 10)])
    assert (await record(pg_api, event("INCOMING", "SKU-1", "WH-1", 1)))["userErrors"] == []
    channels = [{"code": c, "name": c, "locationCodes": ["WH-1"], "backorderLimit": 5} for c in ("WEB", "POS")]
    assert (await pg_api.ok(UPSERT_CHANNELS, input=channels))["upsertChannels"]["userErrors"] == []

    async def web() -> tuple[int, int]:
        (a,) = (await pg_api.ok(CHANNEL_FIGURE, skus=["SKU-1"], channel="WEB"))["availability"]
        return a["available"], a["version"]

    available, before = await web()
    assert available == 1
    reserve = {"lines": [{"skuCode": "SKU-1", "quantity": 1}], "idempotencyKey": "k1", "channelCode": "POS"}
    got = (await pg_api.ok(RESERVE_UNDER, input=reserve))["reserve"]
    assert got["userErrors"] == []
    assert got["reservation"]["lines"] == [{"locationCode": "WH-1", "quantity": 1, "backordered": 1}]
    available, promised = await web()
    assert available == 0
    assert promised > before
    released = (await pg_api.ok(RELEASE_IT, id=got["reservation"]["id"]))["releaseReservation"]
    assert released["reservation"]["status"] == "RELEASED"
    available, after = await web()
    assert available == 1
    assert after > promised


async def test_oversold_summed_over_locations_never_blanks_availability(pg_api: Api) -> None:
    """Seed 25 of the differential test at 300 steps. README, Events: no sum over a SKU's positions may
    pass what an Int holds (item 7: one SKU must never blank the answer). Each position here fits
    (oversold 2,000,000,000 and 1,000,000,000), claims sum to 1,000,000,000, but Availability.oversold is
    3,000,000,000: `availability` answers data null (BAD_USER_INPUT), for every SKU asked with it."""
    await catalogue(pg_api, ["SKU-1", "SKU-2"], [("WH-1", 10), ("WH-2", 20)])
    batch = [
        event("ADJUSTED", "SKU-1", "WH-1", -1_000_000_000),
        event("ORDER_PLACED", "SKU-1", "WH-1", 1_000_000_000),
        event("ADJUSTED", "SKU-1", "WH-2", -1_000_000_000),
    ]
    result = await record(pg_api, *batch)
    if result["userErrors"]:  # refusing the batch keeps the promise too
        assert [u["code"] for u in result["userErrors"]] == ["QUANTITY_OUT_OF_RANGE"]
    query = "query($s: [String!]!) { availability(skuCodes: $s) { skuCode available oversold } }"
    data = await pg_api.ok(query, s=["SKU-1", "SKU-2"])
    assert [a["skuCode"] for a in data["availability"]] == ["SKU-1", "SKU-2"]
