"""B2B on PostgreSQL (issue 19): sell units, accounts with their own allocation, partial holds with dates.

Reserves in cases race reserves in eaches on one SKU over real concurrent connections and never hold
more than is there; account figures are pushed over availabilityChanged when the channel's stock
moves; the README's worked B2B example runs here exactly as written.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from app.db.engine import Database
from app.security.scopes import Scope
from app.services.context import Ctx
from tests.conftest import Api, create_test_key
from tests.helpers import catalogue, event, record
from tests.live import start_server, stop_server
from tests.subscribers import Http, Subscriber, first_messages, http_client

SET_UNITS = """mutation($input: [SellUnitInput!]!) { setSellUnits(input: $input) {
  skus { skuCode units { name size } } userErrors { code message field } } }"""
UPSERT_CHANNELS = (
    """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) { userErrors { code message } } }"""
)
UPSERT_ACCOUNTS = """mutation($input: [AccountInput!]!) { upsertAccounts(input: $input) {
  accounts { code channelCode ringFencedUnits allocationCap allocationPercent } userErrors { code message field } } }"""
BIND = """mutation($key: String!, $codes: [String!]!) { setKeyAccounts(keyId: $key, accountCodes: $codes) {
  accountCodes userErrors { code message } } }"""
FIGURE = """query($skus: [String!]!, $channel: String, $account: String, $unit: String) {
  availability(skuCodes: $skus, channelCode: $channel, accountCode: $account, unit: $unit) {
    skuCode channelCode accountCode unit available version } }"""
EXPLAIN = """query($skus: [String!]!, $channel: String, $account: String) {
  availability(skuCodes: $skus, channelCode: $channel, accountCode: $account) {
    available explain { onHandPart backorderable steps { rule unitsTaken figureAfter } } } }"""
RESERVE = """mutation($input: ReserveInput!) { reserve(input: $input) {
  reservation { id lines { skuCode locationCode quantity held backordered expectedAt } }
  lines { index skuCode unit requested held backordered unfilled expectedAt }
  userErrors { code message field } } }"""
SUB = """subscription($skus: [String!], $channel: String, $account: String) {
  availabilityChanged(skuCodes: $skus, channelCode: $channel, accountCode: $account) {
    skuCode channelCode accountCode available version } }"""

RECORD_EVENTS = """mutation($input: [InventoryEventInput!]!) {
  recordInventoryEvents(input: $input) { userErrors { code } } }"""
SKU = "BOLT-M8"
JAN_10 = "2099-01-10T00:00:00+00:00"


async def _wholesale(api: Api | Http) -> None:
    """The README's B2B set-up: cases of 12, 100 on hand and 48 incoming, a channel and two accounts."""
    data = await api.ok(
        SET_UNITS, input=[{"skuCode": SKU, "name": "inner", "size": 6}, {"skuCode": SKU, "name": "case", "size": 12}]
    )
    assert data["setSellUnits"]["userErrors"] == []
    # the ERP counts cases, the WMS eaches: both are stored in base units
    result = await api.ok(
        RECORD_EVENTS,
        input=[
            event("RECEIVED", SKU, "WH-1", 8, unit="case"),
            event("RECEIVED", SKU, "WH-1", 4, 1),
            event("INCOMING", SKU, "WH-1", 4, 2, unit="case", expectedAt=JAN_10),
        ],
    )
    assert result["recordInventoryEvents"]["userErrors"] == []
    data = await api.ok(
        UPSERT_CHANNELS, input=[{"code": "WHOLESALE", "name": "B2B", "locationCodes": ["WH-1"], "backorderLimit": 24}]
    )
    assert data["upsertChannels"]["userErrors"] == []
    data = await api.ok(
        UPSERT_ACCOUNTS,
        input=[
            {"code": "ACME", "name": "Acme Hardware", "channelCode": "WHOLESALE", "ringFencedUnits": 24},
            {
                "code": "BOLT",
                "name": "Bolt & Co",
                "channelCode": "WHOLESALE",
                "allocationPercent": 25,
                "allocationCap": 60,
            },
        ],
    )
    assert data["upsertAccounts"]["userErrors"] == []


async def _available(api: Api, account: str | None = None, unit: str | None = None) -> int:
    (row,) = (await api.ok(FIGURE, skus=[SKU], channel="WHOLESALE", account=account, unit=unit))["availability"]
    return int(row["available"])


async def test_the_readme_b2b_worked_example(api: Api) -> None:
    await catalogue(api, [SKU], [("WH-1", 10)])
    await _wholesale(api)
    ledger = await api.sql("SELECT kind, quantity, unit FROM inventory_events ORDER BY id")
    assert [tuple(r) for r in ledger] == [("RECEIVED", 96, "case"), ("RECEIVED", 4, None), ("INCOMING", 48, "case")]

    # the channel: 100 on hand + min(24, 48) backorderable = 124; a buyer without an account loses ACME's 24
    assert await _available(api) == 100
    assert await _available(api, unit="case") == 8
    assert await _available(api, "ACME") == 124
    assert await _available(api, "ACME", "case") == 10
    assert await _available(api, "BOLT") == 31  # 124 - 24 fenced = 100, then floor(25 % of 124) = 31
    assert await _available(api, "BOLT", "inner") == 5
    (row,) = (await api.ok(EXPLAIN, skus=[SKU], channel="WHOLESALE", account="BOLT"))["availability"]
    assert [(s["rule"], s["unitsTaken"], s["figureAfter"]) for s in row["explain"]["steps"]] == [
        ("BACKORDER", -24, 124),
        ("ACCOUNT_RING_FENCES", 24, 100),
        ("ACCOUNT_PERCENT", 69, 31),
        ("ACCOUNT_CAP", 0, 31),
    ]

    # reserve holds at most those figures: BOLT's 3 cases (36 > 31) and 101 units for no account are refused
    for account, quantity, unit in (("BOLT", 3, "case"), (None, 101, None)):
        line = {"skuCode": SKU, "quantity": quantity, "unit": unit}
        ask = {"lines": [line], "channelCode": "WHOLESALE", "accountCode": account, "idempotencyKey": f"x{account}"}
        data = (await api.ok(RESERVE, input=ask))["reserve"]
        assert [e["code"] for e in data["userErrors"]] == ["INSUFFICIENT_STOCK"], account
    # without allowPartial, 12 cases (144) for ACME is refused, all-or-nothing
    reserve = {
        "lines": [{"skuCode": SKU, "quantity": 12, "unit": "case"}],
        "channelCode": "WHOLESALE",
        "accountCode": "ACME",
    }
    data = (await api.ok(RESERVE, input={**reserve, "idempotencyKey": "acme-1"}))["reserve"]
    assert [e["code"] for e in data["userErrors"]] == ["INSUFFICIENT_STOCK"] and data["reservation"] is None
    # with it: 100 held now, 24 backordered against the 10 January delivery, 20 unfilled
    data = (await api.ok(RESERVE, input={**reserve, "idempotencyKey": "acme-2", "allowPartial": True}))["reserve"]
    assert data["userErrors"] == []
    assert data["lines"] == [
        {
            "index": 0,
            "skuCode": SKU,
            "unit": "case",
            "requested": 144,
            "held": 100,
            "backordered": 24,
            "unfilled": 20,
            "expectedAt": JAN_10,
        }
    ]
    assert data["reservation"]["lines"] == [
        {"skuCode": SKU, "locationCode": "WH-1", "quantity": 124, "held": 100, "backordered": 24, "expectedAt": JAN_10}
    ]
    assert (await api.sql("SELECT reserved, backordered FROM stock_levels"))[0] == (100, 24)
    assert (await _available(api), await _available(api, "ACME"), await _available(api, "BOLT")) == (0, 0, 0)


async def test_unknown_units_and_accounts_are_typed_errors_and_change_nothing(api: Api) -> None:
    await catalogue(api, [SKU], [("WH-1", 10)])
    await _wholesale(api)
    before = await api.sql("SELECT reserved, version FROM stock_levels")
    base = {"channelCode": "WHOLESALE", "idempotencyKey": uuid.uuid4().hex}
    data = (await api.ok(RESERVE, input={**base, "lines": [{"skuCode": SKU, "quantity": 1, "unit": "pallet"}]}))[
        "reserve"
    ]
    assert [(e["code"], e["field"]) for e in data["userErrors"]] == [("UNKNOWN_UNIT", ["input", "lines", "0", "unit"])]
    data = (await api.ok(RESERVE, input={**base, "accountCode": "NOPE", "lines": [{"skuCode": SKU, "quantity": 1}]}))[
        "reserve"
    ]
    assert [e["code"] for e in data["userErrors"]] == ["UNKNOWN_ACCOUNT"]
    result = await record(api, event("RECEIVED", SKU, "WH-1", 1, unit="pallet"))
    assert [e["code"] for e in result["userErrors"]] == ["UNKNOWN_UNIT"]
    response = (await api.raw(FIGURE, skus=[SKU], channel="WHOLESALE", unit="pallet")).json()
    assert response["errors"][0]["extensions"]["code"] == "UNKNOWN_UNIT"
    data = await api.ok(SET_UNITS, input=[{"skuCode": SKU, "name": "case", "size": -12}])
    assert [e["code"] for e in data["setSellUnits"]["userErrors"]] == ["INVALID_INPUT"]
    assert await api.sql("SELECT reserved, version FROM stock_levels") == before


async def test_keys_bound_to_accounts_see_their_figure(api: Api) -> None:
    await catalogue(api, [SKU], [("WH-1", 10)])
    await _wholesale(api)
    storefront = await api.new_key(Scope.STOREFRONT)  # BOLT's own storefront
    rep = await api.new_key(Scope.STOREFRONT, Scope.CHECKOUT)  # a sales rep serving both
    prefix = {r.name: r.prefix for r in await api.sql("SELECT name, prefix FROM api_keys")}
    assert prefix  # keys exist
    for key, codes in ((storefront, ["BOLT"]), (rep, ["ACME", "BOLT"])):
        key_prefix = key.split("_")[1]
        assert (await api.ok(BIND, key=key_prefix, codes=codes))["setKeyAccounts"]["accountCodes"] == codes
    shop = api.as_key(storefront)
    (row,) = (await shop.ok(FIGURE, skus=[SKU], channel="WHOLESALE"))["availability"]
    assert (row["accountCode"], row["available"]) == ("BOLT", 31)  # the storefront key always sees its account
    forbidden = (await shop.raw(FIGURE, skus=[SKU], account="ACME")).json()
    assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    sales = api.as_key(rep)
    (quote,) = (await sales.ok(FIGURE, skus=[SKU], account="BOLT"))["availability"]
    assert quote["available"] == row["available"] and quote["version"] == row["version"]  # exactly the same figure
    assert [a["code"] for a in (await sales.ok("{ accounts { code } }"))["accounts"]] == ["ACME", "BOLT"]
    need_one = (await sales.raw(FIGURE, skus=[SKU], channel="WHOLESALE")).json()
    assert need_one["errors"][0]["extensions"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize("channel", [None, "WHOLESALE"])
async def test_reserves_in_cases_race_reserves_in_eaches_without_oversell(api: Api, channel: str | None) -> None:
    await catalogue(api, [SKU], [("WH-1", 10)])
    await api.ok(SET_UNITS, input=[{"skuCode": SKU, "name": "case", "size": 12}])
    await record(api, event("RECEIVED", SKU, "WH-1", 100))
    await api.ok(UPSERT_CHANNELS, input=[{"code": "WHOLESALE", "name": "B2B", "locationCodes": ["WH-1"]}])

    async def buy(i: int) -> tuple[int, int]:
        line: dict[str, Any] = {"skuCode": SKU, "locationCode": "WH-1"}
        line.update({"quantity": 1, "unit": "case"} if i % 2 else {"quantity": 5})
        data = (await api.ok(RESERVE, input={"lines": [line], "idempotencyKey": f"r{i}", "channelCode": channel}))[
            "reserve"
        ]
        if data["reservation"] is None:
            assert [e["code"] for e in data["userErrors"]] == ["INSUFFICIENT_STOCK"]
            return i, 0
        return i, data["reservation"]["lines"][0]["quantity"]

    got = await asyncio.gather(*(buy(i) for i in range(40)))  # 20 x 12 + 20 x 5 = 340 wanted of 100
    held = sum(q for _, q in got)
    assert all(q in ((12, 0) if i % 2 else (5, 0)) for i, q in got)
    (reserved, on_hand) = (await api.sql("SELECT reserved, on_hand FROM stock_levels"))[0]
    assert reserved == held <= 100 and on_hand == 100
    # an each-buyer is refused only once fewer than 5 are left, and if none was, 20 x 5 took everything
    assert 100 - held < 5
    ledger = (await api.sql("SELECT coalesce(sum(d_reserved), 0) FROM inventory_events WHERE kind = 'RESERVED'"))[0][0]
    assert ledger == held
    left = 100 - held
    (each,) = (await api.ok(FIGURE, skus=[SKU], channel=channel))["availability"]
    (case,) = (await api.ok(FIGURE, skus=[SKU], channel=channel, unit="case"))["availability"]
    assert (each["available"], case["available"], case["unit"]) == (left, left // 12, "case")


@pytest.mark.slow
async def test_account_figures_are_pushed_when_the_channels_stock_moves(new_database: Callable[[], str]) -> None:
    url = new_database()
    key = await create_test_key(url)
    live = start_server(url)
    try:
        async with http_client(live.url, key) as client:
            http = Http(client)
            await http.catalogue([SKU], ["WH-1"])
            await _wholesale(http)
            bolt = Subscriber(live.ws_url, SUB, {"skus": [SKU], "channel": "WHOLESALE", "account": "BOLT"}, api_key=key)
            acme = Subscriber(live.ws_url, SUB, {"skus": [SKU], "account": "ACME"}, api_key=key)
            async with bolt, acme:
                await first_messages(bolt, 1)
                await first_messages(acme, 1)
                assert (bolt.payloads[0]["accountCode"], bolt.payloads[0]["available"]) == ("BOLT", 31)
                assert acme.payloads[0]["available"] == 124
                # stock moves at the channel's location: 40 sold at a counter
                await http.ok(
                    RECORD_EVENTS,
                    input=[event("SOLD", SKU, "WH-1", 40, 5)],
                )
                # BOLT: 84 - 24 = 60, floor(25 % of 84) = 21; ACME: 60 + 24 = 84
                await bolt.wait_until(lambda ps: ps[-1]["available"] == 21, "BOLT's figure after the sale")
                await acme.wait_until(lambda ps: ps[-1]["available"] == 84, "ACME's figure after the sale")
                # another account's hold moves them too: ACME holds 2 cases
                data = await http.ok(
                    RESERVE,
                    input={
                        "lines": [{"skuCode": SKU, "quantity": 2, "unit": "case"}],
                        "idempotencyKey": "acme-push",
                        "channelCode": "WHOLESALE",
                        "accountCode": "ACME",
                    },
                )
                assert data["reserve"]["userErrors"] == []
                # ACME 84 - 24 = 60; BOLT: fence left 0, pool 36 + 24 backorderable = 60, floor(25 % of 60) = 15
                await acme.wait_until(lambda ps: ps[-1]["available"] == 60, "ACME's figure after its hold")
                await bolt.wait_until(lambda ps: ps[-1]["available"] == 15, "BOLT's figure after ACME's hold")
            for sub in (bolt, acme):
                versions = [p["version"] for p in sub.payloads]
                assert versions == sorted(set(versions))
    finally:
        stop_server(live)


async def test_partial_hold_backorders_within_the_limit_with_its_date(api: Api) -> None:
    await catalogue(api, [SKU], [("WH-1", 10)])
    await record(api, event("RECEIVED", SKU, "WH-1", 5), event("INCOMING", SKU, "WH-1", 10, 1, expectedAt=JAN_10))
    await api.ok(
        UPSERT_CHANNELS, input=[{"code": "WHOLESALE", "name": "B2B", "locationCodes": ["WH-1"], "backorderLimit": 3}]
    )
    line = {"skuCode": SKU, "quantity": 20}
    data = (
        await api.ok(
            RESERVE, input={"lines": [line], "idempotencyKey": "p1", "channelCode": "WHOLESALE", "allowPartial": True}
        )
    )["reserve"]
    (outcome,) = data["lines"]
    assert (outcome["held"], outcome["backordered"], outcome["unfilled"]) == (5, 3, 12)
    assert outcome["expectedAt"] == JAN_10
    # the channel's backorder counter is at its limit: a second partial hold has nothing left to take
    data = (
        await api.ok(
            RESERVE, input={"lines": [line], "idempotencyKey": "p2", "channelCode": "WHOLESALE", "allowPartial": True}
        )
    )["reserve"]
    assert [e["code"] for e in data["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert (await api.sql("SELECT reserved, backordered FROM channel_holds"))[0] == (5, 3)
    # a partial hold needs a channel's rules
    data = (await api.ok(RESERVE, input={"lines": [line], "idempotencyKey": "p3", "allowPartial": True}))["reserve"]
    assert [e["code"] for e in data["userErrors"]] == ["INVALID_INPUT"]


async def test_calls_that_miss_the_key_cache_together_share_one_read(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of subscriptions (10,000 after a restart) each read the key's accounts while the cache was
    cold: each checked a connection out, the pool ran dry and some got "Unexpected error"."""
    from app.services import accounts

    await catalogue(api, [SKU], [("WH-1", 10)])
    await _wholesale(api)
    plain = await api.new_key(Scope.STOREFRONT)  # bound to no account: the usual storefront
    bound = await api.new_key(Scope.STOREFRONT)
    assert (await api.ok(BIND, key=bound.split("_")[1], codes=["BOLT"]))["setKeyAccounts"]["accountCodes"] == ["BOLT"]
    ids = {r[0]: str(r[1]) for r in await api.sql("SELECT prefix, id FROM api_keys")}
    plain_id, bound_id = ids[plain.split("_")[1]], ids[bound.split("_")[1]]
    for key_id in (plain_id, bound_id):
        accounts._bindings.pop(key_id, None)  # cold, as after a restart or the cache's 5 s
    # a database of the test's own (the app's background tasks read through theirs), reads counted
    own = Database(database_url)
    ctx = replace(api.ctx, db=own)
    reads = 0
    real_read = own.read

    def counted_read() -> Any:
        nonlocal reads
        reads += 1
        return real_read()

    monkeypatch.setattr(own, "read", counted_read)
    try:
        await _burst(ctx, plain_id, bound_id, lambda: reads)
    finally:
        await own.dispose()


async def _burst(ctx: Ctx, plain_id: str, bound_id: str, reads: Callable[[], int]) -> None:
    from app.services import accounts

    calls = [asyncio.create_task(accounts.scope_for(ctx, plain_id, None, None)) for _ in range(50)]
    await asyncio.sleep(0)
    calls[0].cancel()  # a caller gone meanwhile leaves the read to the others
    done = await asyncio.gather(*calls[1:])
    assert {(s.channel_code, s.account_code) for s in done} == {(None, None)}
    assert reads() == 1  # the key's accounts, read once for all of them
    assert accounts._reading == {}
    await accounts.scope_for(ctx, plain_id, None, None)
    assert reads() == 1  # now from the cache
    # a bound key: its accounts read once, then each call reads its account's channel
    got = await asyncio.gather(*(accounts.scope_for(ctx, bound_id, None, None) for _ in range(10)))
    assert {(s.channel_code, s.account_code) for s in got} == {("WHOLESALE", "BOLT")}
    assert reads() == 1 + 1 + 10
