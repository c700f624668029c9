"""The operators' queries behind /ops: the catalogue, the filtered ledger, what is wrong now, a SKU's holds."""

from __future__ import annotations

from datetime import timedelta

from app.security.scopes import Scope
from tests.conftest import Api
from tests.helpers import UPSERT_SKUS, at, catalogue, event, record, reserve

SKUS = """query($search: String, $first: Int, $after: String) { skus(search: $search, first: $first, after: $after) {
  nodes { code name } pageInfo { hasNextPage endCursor } } }"""
LEDGER = """query($sku: String, $types: [LedgerEntryKind!], $source: String, $ref: String, $from: DateTime,
  $before: DateTime, $first: Int, $after: String) {
  inventoryEvents(skuCode: $sku, types: $types, source: $source, reference: $ref, occurredFrom: $from,
                  occurredBefore: $before, first: $first, after: $after) {
    nodes { externalId type source reference } pageInfo { hasNextPage endCursor } } }"""


async def test_skus_are_listed_by_code_and_searched_by_code_or_name(api: Api) -> None:
    items = [{"code": f"TEE-{i:02d}", "name": f"Tee size {i}"} for i in range(5)]
    items += [{"code": "CAP-1", "name": "Red cap"}, {"code": "100%_WOOL", "name": "Scarf"}]
    assert (await api.ok(UPSERT_SKUS, input=items))["upsertSkus"]["userErrors"] == []

    first = (await api.ok(SKUS, first=3))["skus"]
    assert [n["code"] for n in first["nodes"]] == ["100%_WOOL", "CAP-1", "TEE-00"]
    assert first["pageInfo"]["hasNextPage"] is True
    rest = (await api.ok(SKUS, first=10, after=first["pageInfo"]["endCursor"]))["skus"]
    assert [n["code"] for n in rest["nodes"]] == ["TEE-01", "TEE-02", "TEE-03", "TEE-04"]
    assert rest["pageInfo"]["hasNextPage"] is False

    assert [n["code"] for n in (await api.ok(SKUS, search="cap red"))["skus"]["nodes"]] == []
    assert [n["code"] for n in (await api.ok(SKUS, search="RED cap"))["skus"]["nodes"]] == ["CAP-1"]  # by name
    assert [n["code"] for n in (await api.ok(SKUS, search="tee-0"))["skus"]["nodes"]] == [
        f"TEE-{i:02d}" for i in range(5)
    ]
    # % and _ are the operator's text, not wildcards
    assert [n["code"] for n in (await api.ok(SKUS, search="0%_"))["skus"]["nodes"]] == ["100%_WOOL"]
    assert [n["code"] for n in (await api.ok(SKUS, search="E_0"))["skus"]["nodes"]] == []

    bad = (await api.raw(SKUS, after="not-a-cursor!")).json()
    assert bad["data"] is None and "cursor" in bad["errors"][0]["message"]


async def test_the_ledger_filters_by_type_source_reference_and_time(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    assert (
        await record(
            api,
            event("RECEIVED", "SKU-1", "WH-1", 10, -60, externalId="r1", reference="PO-7"),
            event("SOLD", "SKU-1", "WH-1", 2, -30, externalId="s1"),
            event("RECEIVED", "SKU-2", "WH-1", 5, -20, externalId="r2", reference="PO-7", source="wms"),
            event("SOLD", "SKU-1", "WH-1", 1, -10, externalId="s2", source="pos"),
        )
    )["userErrors"] == []

    def ids(data: dict[str, object]) -> list[str]:
        return [n["externalId"] for n in data["inventoryEvents"]["nodes"]]  # type: ignore[index]

    assert ids(await api.ok(LEDGER, types=["SOLD"])) == ["s2", "s1"]
    assert ids(await api.ok(LEDGER, types=["SOLD", "RECEIVED"], source="pos")) == ["s2"]
    assert ids(await api.ok(LEDGER, ref="PO-7")) == ["r2", "r1"]
    assert ids(await api.ok(LEDGER, ref="PO-7", sku="SKU-1")) == ["r1"]
    # from inclusive, before exclusive: -30 is in, -10 is out
    assert ids(await api.ok(LEDGER, **{"from": at(-30), "before": at(-10)})) == ["r2", "s1"]
    page = (await api.ok(LEDGER, first=3))["inventoryEvents"]
    more = await api.ok(LEDGER, first=3, after=page["pageInfo"]["endCursor"])
    assert ids(more) == ["r1"] and not more["inventoryEvents"]["pageInfo"]["hasNextPage"]

    naive = (await api.raw(LEDGER, **{"from": "2026-01-01T09:00:00"})).json()
    assert naive["data"] is None and "time zone" in naive["errors"][0]["message"]


async def test_oversold_positions_and_a_skus_active_holds(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"], locations=[("WH-1", 10), ("WH-2", 20)])
    assert (
        await record(
            api,
            event("RECEIVED", "SKU-1", "WH-1", 5),
            event("RECEIVED", "SKU-1", "WH-2", 5),
            event("RECEIVED", "SKU-2", "WH-1", 5),
        )
    )["userErrors"] == []
    held = await reserve(api, [{"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": 4}], cartRef="cart-1")
    assert held["userErrors"] == []
    # the warehouse reports a loss after the hold: 4 held, 2 on hand -> oversold 2
    assert (await record(api, event("ADJUSTED", "SKU-1", "WH-1", -3, externalId="loss")))["userErrors"] == []

    oversold = await api.ok("{ oversoldPositions { skuCode locationCode onHand reserved oversold } }")
    assert oversold["oversoldPositions"] == [
        {"skuCode": "SKU-1", "locationCode": "WH-1", "onHand": 2, "reserved": 4, "oversold": 2}
    ]
    expires = (api.ctx.clock() + timedelta(hours=1)).isoformat()
    hold = {"source": "amazon", "externalId": "cart-9", "action": "PLACE", "skuCode": "SKU-1", "locationCode": "WH-2"}
    placed = await api.ok(
        """mutation($input: [ExternalHoldInput!]!) { recordExternalHolds(input: $input) { userErrors { code } } }""",
        input=[{**hold, "quantity": 1, "expiresAt": expires}],
    )
    assert placed["recordExternalHolds"]["userErrors"] == []

    holds = (await api.ok("""{ activeHolds(skuCode: "SKU-1") { kind id locationCode quantity reference } }"""))[
        "activeHolds"
    ]
    assert sorted((h["kind"], h["locationCode"], h["quantity"], h["reference"]) for h in holds) == [
        ("EXTERNAL_HOLD", "WH-2", 1, "amazon"),
        ("RESERVATION", "WH-1", 4, "cart-1"),
    ]
    assert (await api.ok("""{ activeHolds(skuCode: "SKU-2") { id } }"""))["activeHolds"] == []


async def test_the_last_snapshots_corrections_are_what_is_drifting(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    assert (await record(api, event("RECEIVED", "SKU-1", "WH-1", 10, -60), event("RECEIVED", "SKU-2", "WH-1", 4, -60)))[
        "userErrors"
    ] == []
    snapshot = """mutation($rows: [SnapshotRowInput!]!, $takenAt: DateTime!) {
      importSnapshot(source: "netsuite", takenAt: $takenAt, input: $rows, apply: true) { userErrors { code } } }"""
    rows = [{"skuCode": "SKU-1", "locationCode": "WH-1", "onHand": 7}]
    assert (await api.ok(snapshot, rows=rows, takenAt=at(-30)))["importSnapshot"]["userErrors"] == []
    later = [
        {"skuCode": "SKU-1", "locationCode": "WH-1", "onHand": 7},
        {"skuCode": "SKU-2", "locationCode": "WH-1", "onHand": 5},
    ]
    assert (await api.ok(snapshot, rows=later, takenAt=at(-5)))["importSnapshot"]["userErrors"] == []

    data = await api.ok("{ snapshotCorrections { skuCode locationCode quantity onHandChange source } }")
    # only the last snapshot, and only what it moved: SKU-1 was already at 7
    assert data["snapshotCorrections"] == [
        {"skuCode": "SKU-2", "locationCode": "WH-1", "quantity": 5, "onHandChange": 1, "source": "netsuite"}
    ]


async def test_an_operator_key_reads_the_console_but_cannot_move_stock(api: Api) -> None:
    operator = api.as_key(await api.new_key(Scope.ADMIN))
    await catalogue(api, skus=["SKU-1"])
    for query in (
        "{ skus { nodes { code } } }",
        "{ stockLevels { skuCode } }",
        "{ oversoldPositions { skuCode } }",
        "{ snapshotCorrections { skuCode } }",
        """{ activeHolds(skuCode: "SKU-1") { id } }""",
        "{ inventoryEvents { nodes { id } } }",
    ):
        await operator.ok(query)
    refused = (await operator.raw("""mutation { recordInventoryEvents(input: []) { userErrors { code } } }""")).json()
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    storefront = api.as_key(await api.new_key(Scope.STOREFRONT))
    assert (await storefront.raw("{ skus { nodes { code } } }")).json()["errors"][0]["extensions"][
        "code"
    ] == "FORBIDDEN"
