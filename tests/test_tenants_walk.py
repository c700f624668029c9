# ruff: noqa: E501  (a table of GraphQL documents, one per root field: kept one per line)
"""The schema walk of issue 14: every root query and mutation, called with tenant A's key, neither
reads nor changes anything of tenant B, although both tenants use the very same codes (SKU-1, WH-1,
WEB, ACME, ...), so a lookup by code that forgot its tenant would find B's rows. (Subscriptions: in
tests/test_tenants_push.py, across processes.)

B's world is marked: its names say "Bravo", its quantities are in the 700s, and its ids (reservation,
decision, keys) are known; A's answers may contain none of them. A's mutations aimed at B's ids are
answered as for ids that do not exist, and B's whole state, read before and after, is unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.db import tenancy
from app.graphql.permissions import REQUIRED
from tests.conftest import Api
from tests.helpers import RECORD, at
from tests.test_tenants import key_of, make_tenant

pytestmark = pytest.mark.postgres

SETUP = [
    (
        'mutation($n: String!) { upsertSkus(input: [{code: "SKU-1", name: $n}, {code: "SKU-2", name: $n}]) '
        "{ userErrors { code } } }",
        {},
    ),
    (
        'mutation($n: String!) { upsertLocations(input: [{code: "WH-1", name: $n, kind: WAREHOUSE, latitude: 1, '
        'longitude: 1}, {code: "WH-2", name: $n, kind: STORE}]) { userErrors { code } } }',
        {},
    ),
    (
        'mutation($n: String!) { upsertChannels(input: [{code: "WEB", name: $n, locationCodes: ["WH-1", "WH-2"], '
        "lowStockThreshold: 3}]) { userErrors { code } } }",
        {},
    ),
    (
        'mutation { setLocationRouting(input: [{locationCode: "WH-1", dailyOrderCapacity: 50}]) { userErrors { code } } }',
        {},
    ),
    ('mutation { setSellUnits(input: [{skuCode: "SKU-1", name: "case", size: 6}]) { userErrors { code } } }', {}),
    (
        'mutation($n: String!) { upsertAccounts(input: [{code: "ACME", name: $n, channelCode: "WEB"}]) '
        "{ userErrors { code } } }",
        {},
    ),
]


async def build_world(api: Api, label: str, units: int) -> dict[str, Any]:
    """The same codes in every tenant; names and quantities say whose they are."""
    for doc, _ in SETUP:
        data = await api.ok(doc, **({"n": f"{label} thing"} if "$n" in doc else {}))
        assert all(not v["userErrors"] for v in data.values()), data
    events = [
        {
            "source": "erp",
            "externalId": f"{sku}-{loc}",
            "type": "RECEIVED",
            "skuCode": sku,
            "locationCode": loc,
            "quantity": units,
            "occurredAt": at(0),
            "reference": f"{label}-ref",
        }
        for sku in ("SKU-1", "SKU-2")
        for loc in ("WH-1", "WH-2")
    ]
    assert not (await api.ok(RECORD, input=events))["recordInventoryEvents"]["userErrors"]
    reserved = await api.ok(
        'mutation { reserve(input: {idempotencyKey: "idem-1", cartRef: "cart-1", channelCode: "WEB", '
        'lines: [{skuCode: "SKU-1", quantity: 2, locationCode: "WH-1"}]}) { reservation { id } userErrors { code } } }'
    )
    routed = await api.ok(
        'mutation { routeAndReserve(input: {orderRef: "order-1", lines: [{skuCode: "SKU-2", quantity: 1}]}) '
        "{ decision { id } reservation { id } userErrors { code } } }"
    )
    held = await api.ok(
        'mutation { recordExternalHolds(input: [{source: "mkt", externalId: "h-1", action: PLACE, skuCode: "SKU-2", '
        'locationCode: "WH-2", quantity: 1}]) { userErrors { code } } }'
    )
    assert not held["recordExternalHolds"]["userErrors"], held
    key = await api.ok(
        "mutation($n: String!) { createApiKey(input: {name: $n, scopes: [CHECKOUT]}) { apiKey { id prefix } userErrors { code } } }",
        n=f"{label} key",
    )
    return {
        "reservation": reserved["reserve"]["reservation"]["id"],
        "routed_reservation": routed["routeAndReserve"]["reservation"]["id"],
        "decision": routed["routeAndReserve"]["decision"]["id"],
        "key_id": key["createApiKey"]["apiKey"]["id"],
        "key_prefix": key["createApiKey"]["apiKey"]["prefix"],
    }


LEVEL = "skuCode locationCode onHand committed reserved unavailable incoming available version"
RESERVATION = "id status cartRef orderRef channelCode lines { skuCode locationCode quantity }"
DECISION = "id orderRef reason request reservationId"

# every root query, as tenant A calls it (B's ids where one is asked for)
QUERIES: dict[str, str] = {
    "Query.stockLevels": f"{{ stockLevels {{ {LEVEL} }} }}",
    "Query.availability": '{ availability(skuCodes: ["SKU-1", "SKU-2"], channelCode: "WEB") { skuCode available '
    "oversold version locations { locationCode available onHand } explain { pool mine base incoming } } }",
    "Query.unknownSkuCodes": '{ unknownSkuCodes(skuCodes: ["SKU-1", "SKU-9"]) }',
    "Query.reservation": f'{{ reservation(id: "$B_RESERVATION") {{ {RESERVATION} }} }}',
    "Query.reservations": f'{{ reservations(cartRef: "cart-1") {{ {RESERVATION} }} }}',
    "Query.inventoryEvents": "{ inventoryEvents(first: 100) { nodes { id source externalId skuCode locationCode "
    "quantity reference reservationId actorKeyId } } }",
    "Query.locations": "{ locations { code name kind } }",
    "Query.routeOrder": '{ routeOrder(input: {orderRef: "dry", lines: [{skuCode: "SKU-1", quantity: 1}]}) '
    "{ reason request candidates { locationCode } } }",
    "Query.routingDecisions": f'{{ routingDecisions(orderRef: "order-1") {{ {DECISION} }} }}',
    "Query.locationRouting": "{ locationRouting { locationCode dailyOrderCapacity ordersToday } }",
    "Query.channels": "{ channels { code name locationCodes version } }",
    "Query.channelPublications": '{ channelPublications(channelCode: "WEB") { skuCode currentAvailable currentVersion } }',
    "Query.channelDemand": '{ channelDemand(channelCode: "WEB", skuCodes: ["SKU-1"]) { skuCode velocityPerHour target } }',
    "Query.orphanedHolds": "{ orphanedHolds(committedOlderThanDays: 0) { kind id skuCode quantity } }",
    "Query.apiKeys": "{ apiKeys(includeRevoked: true) { id name prefix } }",
    "Query.apiKeyEvents": "{ apiKeyEvents { keyId keyPrefix keyName actorKeyId } }",
    "Query.channelDeliveries": '{ channelDeliveries(channelCode: "WEB") { id items error } }',
    "Query.skus": "{ skus { nodes { code name } } }",
    "Query.oversoldPositions": f"{{ oversoldPositions {{ {LEVEL} }} }}",
    "Query.snapshotCorrections": "{ snapshotCorrections { id skuCode quantity reference } }",
    "Query.activeHolds": '{ activeHolds(skuCode: "SKU-2") { kind id quantity reference } }',
    "Query.accounts": "{ accounts { code name channelCode } }",
    "Query.sellUnits": '{ sellUnits(skuCodes: ["SKU-1"]) { skuCode units { name size } } }',
}

# every root mutation, as tenant A calls it: on the shared codes, or on B's ids
MUTATIONS: dict[str, str] = {
    "Mutation.upsertSkus": 'mutation { upsertSkus(input: [{code: "SKU-1", name: "Alpha renamed"}]) { userErrors { code } } }',
    "Mutation.upsertLocations": 'mutation { upsertLocations(input: [{code: "WH-1", name: "Alpha renamed", kind: WAREHOUSE}]) '
    "{ userErrors { code } } }",
    "Mutation.recordInventoryEvents": 'mutation { recordInventoryEvents(input: [{source: "erp", externalId: "SKU-1-WH-1", '
    'type: RECEIVED, skuCode: "SKU-1", locationCode: "WH-1", quantity: 10, occurredAt: "2026-01-01T00:00:00Z"}, '
    '{source: "erp", externalId: "alpha-2", type: SHIPPED, skuCode: "SKU-2", locationCode: "WH-2", quantity: 1, '
    'occurredAt: "2026-01-01T00:00:00Z"}], atomic: false) { userErrors { code } } }',
    "Mutation.reserve": 'mutation { reserve(input: {idempotencyKey: "idem-1", lines: [{skuCode: "SKU-1", quantity: 1}]}) '
    "{ reservation { id } userErrors { code } } }",
    "Mutation.commitReservation": 'mutation { commitReservation(id: "$B_RESERVATION", orderRef: "o") { reservation { id } '
    "userErrors { code } } }",
    "Mutation.releaseReservation": 'mutation { releaseReservation(id: "$B_ROUTED") { reservation { id } userErrors { code } } }',
    "Mutation.extendReservation": 'mutation { extendReservation(id: "$B_RESERVATION", ttlSeconds: 60) { reservation { id } '
    "userErrors { code } } }",
    "Mutation.routeAndReserve": 'mutation { routeAndReserve(input: {orderRef: "order-1", lines: [{skuCode: "SKU-1", '
    "quantity: 1}]}) { decision { id } userErrors { code } } }",
    "Mutation.setLocationRouting": 'mutation { setLocationRouting(input: [{locationCode: "WH-1", dailyOrderCapacity: 1}]) '
    "{ userErrors { code } } }",
    "Mutation.upsertChannels": 'mutation { upsertChannels(input: [{code: "WEB", name: "Alpha web", locationCodes: ["WH-2"], '
    "safetyBufferUnits: 1}]) { userErrors { code } } }",
    "Mutation.setSkuLaunches": 'mutation { setSkuLaunches(input: [{skuCode: "SKU-2", launchAt: "2099-01-01T00:00:00Z", '
    "preorderLimit: 1}]) { userErrors { code } } }",
    "Mutation.setRingFences": 'mutation { setRingFences(channelCode: "WEB", input: [{skuCode: "SKU-1", locationCode: "WH-1", '
    "units: 1}]) { userErrors { code } } }",
    "Mutation.recordExternalHolds": 'mutation { recordExternalHolds(input: [{source: "mkt", externalId: "h-1", action: RELEASE}]) '
    "{ userErrors { code } } }",
    "Mutation.importSnapshot": 'mutation { importSnapshot(source: "erp", takenAt: "2030-01-01T00:00:00Z", apply: true, '
    'input: [{skuCode: "SKU-1", locationCode: "WH-1", onHand: 1}]) { rows userErrors { code } } }',
    "Mutation.createApiKey": 'mutation { createApiKey(input: {name: "Alpha key 2", scopes: [ADMIN]}) { userErrors { code } } }',
    "Mutation.revokeApiKey": 'mutation { revokeApiKey(id: "$B_KEY") { apiKey { id } userErrors { code } } }',
    "Mutation.replayChannel": 'mutation { replayChannel(channelCode: "WEB") { replayed userErrors { code } } }',
    "Mutation.setSellUnits": 'mutation { setSellUnits(input: [{skuCode: "SKU-1", name: "case", size: 12}]) { userErrors { code } } }',
    "Mutation.upsertAccounts": 'mutation { upsertAccounts(input: [{code: "ACME", name: "Alpha acme", channelCode: "WEB", '
    "allocationCap: 1}]) { userErrors { code } } }",
    "Mutation.setKeyAccounts": 'mutation { setKeyAccounts(keyId: "$B_KEY", accountCodes: ["ACME"]) { accountCodes '
    "userErrors { code } } }",
}
SUBSCRIPTIONS = {"Subscription.availabilityChanged", "Subscription.stockLevelChanged", "Subscription.channelAlerts"}

# all of tenant B's state an API can show (timestamps of use left out: reading moves them)
B_STATE = f"""{{
  skus {{ nodes {{ code name }} }} locations {{ code name kind }} stockLevels {{ {LEVEL} }}
  availability(skuCodes: ["SKU-1", "SKU-2"], channelCode: "WEB") {{ skuCode available version }}
  channels {{ code name locationCodes version safetyBufferUnits }} locationRouting {{ locationCode dailyOrderCapacity ordersToday }}
  reservations(cartRef: "cart-1") {{ {RESERVATION} expiresAt }} routingDecisions(orderRef: "order-1") {{ id }}
  inventoryEvents(first: 100) {{ nodes {{ id }} }} apiKeys(includeRevoked: true) {{ id name revokedAt }}
  accounts {{ code name }} sellUnits(skuCodes: ["SKU-1"]) {{ units {{ name size }} }}
  orphanedHolds(committedOlderThanDays: 0) {{ id quantity }} activeHolds(skuCode: "SKU-2") {{ id quantity }}
}}"""


def test_the_walk_covers_every_root_field() -> None:
    covered = set(QUERIES) | set(MUTATIONS) | SUBSCRIPTIONS
    assert covered == set(REQUIRED), f"missing: {set(REQUIRED) - covered}; unknown: {covered - set(REQUIRED)}"


def _leaks(body: dict[str, Any], b: dict[str, Any]) -> list[str]:
    text = json.dumps(body)
    found = [m for m in ("Bravo", "bravo") if m in text]
    found += [v for k, v in b.items() if k != "decision" and v in text]  # a decision id is a small number
    found += [str(n) for n in _numbers(body) if 700 <= n < 800]  # B's quantities (A's are below 100)
    return found


def _numbers(value: Any) -> list[int]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, str) and value.startswith("{"):  # a decision's request: JSON in a string
        return _numbers(json.loads(value))
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


async def test_tenant_a_reads_and_changes_nothing_of_tenant_b(api: Api, database_url: str) -> None:
    b_tenant = await make_tenant(database_url, "brand-b")
    b_api = api.as_key(await key_of(api.ctx.db, b_tenant))
    a_ids = await build_world(api, "Alpha", 10)
    b_ids = await build_world(b_api, "Bravo", 777)
    # B's key with another tenant's ids: as if they did not exist
    assert (await b_api.ok(QUERIES["Query.reservation"].replace("$B_RESERVATION", a_ids["reservation"])))[
        "reservation"
    ] is None

    def bind(doc: str) -> str:
        return (
            doc.replace("$B_RESERVATION", b_ids["reservation"])
            .replace("$B_ROUTED", b_ids["routed_reservation"])
            .replace("$B_KEY", b_ids["key_id"])
        )

    for coordinate, doc in QUERIES.items():
        answer = await api.raw(bind(doc))
        body = answer.json()
        assert answer.status_code == 200 and "errors" not in body, (coordinate, body)
        assert _leaks(body, b_ids) == [], (coordinate, body)
    assert (await api.ok(bind(QUERIES["Query.reservation"])))["reservation"] is None
    decisions = (await api.ok(QUERIES["Query.routingDecisions"]))["routingDecisions"]
    assert [d["id"] for d in decisions] == [a_ids["decision"]]
    assert (await api.ok(QUERIES["Query.skus"]))["skus"]["nodes"][0]["name"] == "Alpha thing"  # A sees its own

    before = await b_api.ok(B_STATE)
    for coordinate, doc in MUTATIONS.items():
        answer = await api.raw(bind(doc))
        body = answer.json()
        assert answer.status_code == 200, (coordinate, body)
        assert _leaks(body, b_ids) == [], (coordinate, body)
        if "$B_" in doc:  # B's ids are unknown to A: answered exactly as an id that exists nowhere
            nowhere = await api.ok(re.sub(r"\$B_[A-Z]+", "00000000-0000-4000-8000-000000000000", doc))
            (payload,) = body["data"].values()
            assert payload["userErrors"] and payload == next(iter(nowhere.values())), (coordinate, body, nowhere)
    after = await b_api.ok(B_STATE)
    assert after == before
    # and A's own world did change (the walk is not vacuous)
    assert (await api.ok(QUERIES["Query.skus"]))["skus"]["nodes"][0]["name"] == "Alpha renamed"
    with tenancy.acting_for(b_tenant):
        assert await api.sql("SELECT count(*) FROM skus") == [(2,)]
