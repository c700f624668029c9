"""Recording events over HTTP: effects, idempotency, batches, late events, the ledger."""

from __future__ import annotations

from tests.conftest import Api
from tests.helpers import RECORD, catalogue, event, level, record


async def test_received_then_sold_moves_on_hand_and_versions(api: Api) -> None:
    await catalogue(api)
    result = await record(api, event("RECEIVED", "SKU-1", "WH-1", 10), event("SOLD", "SKU-1", "WH-1", 3, 1))
    assert [(r["status"], r["version"]) for r in result["results"]] == [("APPLIED", 1), ("APPLIED", 2)]
    row = await level(api, "SKU-1", "WH-1")
    assert (row["onHand"], row["available"], row["version"]) == (7, 7, 2)


async def test_every_quantity_follows_the_event_table(api: Api) -> None:
    await catalogue(api, locations=[("WH-1", 10), ("WH-2", 20)])
    result = await record(
        api,
        event("INCOMING", "SKU-1", "WH-1", 8, expectedAt="2026-02-01T00:00:00Z"),
        event("RECEIVED", "SKU-1", "WH-1", 5),  # onHand 5, incoming 3
        event("ADJUSTED", "SKU-1", "WH-1", -1),  # onHand 4
        event("ORDER_PLACED", "SKU-1", "WH-1", 3),  # committed 3
        event("SHIPPED", "SKU-1", "WH-1", 1),  # onHand 3, committed 2
        event("ORDER_CANCELLED", "SKU-1", "WH-1", 1),  # committed 1
        event("DAMAGED", "SKU-1", "WH-1", 2),  # unavailable 2
        event("REPAIRED", "SKU-1", "WH-1", 1),  # unavailable 1
        event("RETURNED", "SKU-1", "WH-1", 4),  # onHand 7
        event("WRITTEN_OFF", "SKU-1", "WH-1", 1),  # onHand 6, unavailable 0
        event("SAFETY_STOCK_SET", "SKU-1", "WH-1", 2),
        event("TRANSFER_OUT", "SKU-1", "WH-1", 2, toLocationCode="WH-2"),  # onHand 4; WH-2 incoming 2
        event("TRANSFER_IN", "SKU-1", "WH-2", 2),  # WH-2 onHand 2, incoming 0
    )
    assert result["userErrors"] == []
    assert {r["status"] for r in result["results"]} == {"APPLIED"}
    one = await level(api, "SKU-1", "WH-1")
    assert {k: one[k] for k in ("onHand", "committed", "reserved", "unavailable", "safetyStock", "incoming")} == {
        "onHand": 4,
        "committed": 1,
        "reserved": 0,
        "unavailable": 0,
        "safetyStock": 2,
        "incoming": 3,
    }
    assert one["available"] == 4 - 1 - 0 - 0 - 2
    two = await level(api, "SKU-1", "WH-2")
    assert (two["onHand"], two["incoming"], two["version"]) == (2, 0, 2)


async def test_clipped_amounts_are_reported_as_drift_and_on_hand_may_go_negative(api: Api) -> None:
    await catalogue(api)
    result = await record(api, event("ORDER_PLACED", "SKU-1", "WH-1", 3), event("SHIPPED", "SKU-1", "WH-1", 5))
    assert result["results"][1]["drift"] == 2
    row = await level(api, "SKU-1", "WH-1")
    assert (row["onHand"], row["committed"], row["oversold"]) == (-5, 0, 5)  # max(0, 0 + 0 + 0 - (-5))
    ledger = await api.sql("SELECT d_on_hand, d_committed, drift FROM inventory_events WHERE kind = 'SHIPPED'")
    assert [tuple(r) for r in ledger] == [(-5, -3, 2)]


async def test_duplicates_in_one_batch_and_across_batches_apply_once(api: Api) -> None:
    await catalogue(api)
    e = event("RECEIVED", "SKU-1", "WH-1", 10)
    first = await record(api, e, e)
    assert [r["status"] for r in first["results"]] == ["APPLIED", "DUPLICATE"]
    again = await record(api, e)
    assert again["results"] == [{"index": 0, "status": "DUPLICATE", "version": 1, "drift": 0}]
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 10
    rows = await api.sql("SELECT count(*) FROM inventory_events")
    assert rows[0][0] == 1


async def test_same_external_id_with_other_content_is_an_event_conflict(api: Api) -> None:
    await catalogue(api)
    e = event("RECEIVED", "SKU-1", "WH-1", 10)
    await record(api, e)
    result = await record(api, {**e, "quantity": 11})
    assert [x["code"] for x in result["userErrors"]] == ["EVENT_CONFLICT"]
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 10


async def test_a_bad_event_refuses_the_whole_batch_by_default(api: Api) -> None:
    await catalogue(api)
    result = await record(
        api, event("RECEIVED", "SKU-1", "WH-1", 10), event("SOLD", "NOPE", "WH-1", 1), event("SOLD", "SKU-1", "WH-1", 0)
    )
    assert result["results"] == []
    assert sorted((e["code"], tuple(e["field"])) for e in result["userErrors"]) == [
        ("INVALID_QUANTITY", ("input", "2", "quantity")),
        ("UNKNOWN_SKU", ("input", "1", "skuCode")),
    ]
    assert await api.sql("SELECT * FROM inventory_events") == []
    assert await api.sql("SELECT * FROM stock_levels WHERE version > 0") == []


async def test_non_atomic_batch_applies_the_good_events_and_reports_the_bad(api: Api) -> None:
    await catalogue(api)
    result = await record(
        api, event("RECEIVED", "SKU-1", "WH-1", 10), event("SOLD", "SKU-1", "NOWHERE", 1), atomic=False
    )
    assert [(r["index"], r["status"]) for r in result["results"]] == [(0, "APPLIED")]
    assert [(e["code"], e["field"][1]) for e in result["userErrors"]] == [("UNKNOWN_LOCATION", "1")]
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 10


async def test_late_deltas_before_a_count_are_superseded_and_later_ones_apply(api: Api) -> None:
    await catalogue(api)
    result = await record(
        api,
        event("RECEIVED", "SKU-1", "WH-1", 50, minutes=-10),  # before the count: replaced by it
        event("COUNTED", "SKU-1", "WH-1", 40, minutes=0),
        event("SOLD", "SKU-1", "WH-1", 3, minutes=-5),  # arrives late, occurred before the count
        event("SOLD", "SKU-1", "WH-1", 2, minutes=5),  # after the count: applies
        event("ORDER_PLACED", "SKU-1", "WH-1", 4, minutes=-1),  # no on-hand effect: applies in full
    )
    assert [r["status"] for r in result["results"]] == ["APPLIED", "APPLIED", "SUPERSEDED", "APPLIED", "APPLIED"]
    row = await level(api, "SKU-1", "WH-1")
    assert (row["onHand"], row["committed"]) == (38, 4)


async def test_a_count_arriving_after_later_deltas_keeps_them(api: Api) -> None:
    await catalogue(api)
    await record(api, event("RECEIVED", "SKU-1", "WH-1", 10, minutes=10))
    result = await record(api, event("COUNTED", "SKU-1", "WH-1", 7, minutes=0))
    assert result["results"][0]["status"] == "APPLIED"
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 17
    older = await record(api, event("COUNTED", "SKU-1", "WH-1", 99, minutes=-1))
    assert older["results"][0]["status"] == "SUPERSEDED"
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 17


async def test_counts_from_a_source_that_is_not_the_authority_are_flagged(api: Api) -> None:
    await catalogue(api)
    await api.ok("""mutation { upsertLocations(input: [{code: "WH-1", name: "Place WH-1", kind: WAREHOUSE,
        countAuthority: "wms"}]) { userErrors { code } } }""")
    result = await record(
        api,
        event("COUNTED", "SKU-1", "WH-1", 5, source="pos"),
        event("COUNTED", "SKU-1", "WH-1", 8, minutes=1, source="wms"),
    )
    assert [r["status"] for r in result["results"]] == ["FLAGGED", "APPLIED"]
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 8


async def test_ledger_is_paginated_newest_first_and_filterable(api: Api) -> None:
    await catalogue(api, locations=[("WH-1", 10), ("WH-2", 20)])
    await record(
        api,
        *(event("RECEIVED", "SKU-1", "WH-1", i + 1, minutes=i) for i in range(5)),
        event("RECEIVED", "SKU-1", "WH-2", 9, source="wms"),
    )
    q = """query($after: String, $source: String, $loc: String) {
      inventoryEvents(skuCode: "SKU-1", locationCode: $loc, source: $source, first: 2, after: $after) {
        nodes { quantity source type status onHandChange version } pageInfo { hasNextPage endCursor } } }"""
    seen: list[int] = []
    after = None
    while True:
        page = (await api.ok(q, after=after, loc="WH-1"))["inventoryEvents"]
        seen += [n["quantity"] for n in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == [5, 4, 3, 2, 1]
    wms = (await api.ok(q, source="wms"))["inventoryEvents"]["nodes"]
    assert [(n["quantity"], n["onHandChange"]) for n in wms] == [(9, 9)]


async def test_bad_cursor_is_a_clear_graphql_error(api: Api) -> None:
    response = await api.raw('{ inventoryEvents(after: "!!nope") { nodes { id } } }')
    assert response.status_code == 200
    assert "not a cursor" in response.json()["errors"][0]["message"]


async def test_future_and_naive_times_are_refused(api: Api) -> None:
    await catalogue(api)
    result = await record(api, {**event("RECEIVED", "SKU-1", "WH-1", 1), "occurredAt": "2999-01-01T00:00:00Z"})
    assert [e["code"] for e in result["userErrors"]] == ["INVALID_INPUT"]
    naive = await api.ok(RECORD, input=[{**event("RECEIVED", "SKU-1", "WH-1", 1), "occurredAt": "2026-01-01T00:00:00"}])
    assert [e["code"] for e in naive["recordInventoryEvents"]["userErrors"]] == ["INVALID_INPUT"]


async def test_a_full_batch_at_a_thousand_positions_applies(api: Api) -> None:
    """The largest legal batch (max_batch_size 1,000) at 1,000 distinct positions applies in one call."""
    skus = [f"SKU-{i:03}" for i in range(500)]
    await catalogue(api, skus=skus, locations=[("WH-1", 10), ("WH-2", 20)])
    events = [event("RECEIVED", s, loc, 1 + i % 7) for i, s in enumerate(skus) for loc in ("WH-1", "WH-2")]
    result = await record(api, *events)
    assert result["userErrors"] == []
    assert len(result["results"]) == 1000 and {r["status"] for r in result["results"]} == {"APPLIED"}
    rows = await api.sql("SELECT count(*), sum(on_hand) FROM stock_levels WHERE version = 1")
    assert tuple(rows[0]) == (1000, 2 * sum(1 + i % 7 for i in range(500)))


async def test_one_batch_changing_positions_many_times_gives_each_change_its_version(api: Api) -> None:
    # a batch's changes are summed per position and written in one statement (services.events): each
    # change still gets the next version, a count keeps later events, a late delta is SUPERSEDED, and a
    # repeat inside the batch answers the version its first occurrence recorded
    await catalogue(api, locations=[("WH-1", 10), ("WH-2", 20)])
    sold = event("SOLD", "SKU-1", "WH-1", 2, 7)
    result = await record(
        api,
        event("RECEIVED", "SKU-1", "WH-1", 10, 0),  # WH-1 v1 onHand 10
        event("RECEIVED", "SKU-1", "WH-2", 7, 0),  # WH-2 v1 onHand 7
        sold,  # WH-1 v2 onHand 8 (at minute 7)
        event("COUNTED", "SKU-1", "WH-1", 20, 5),  # WH-1 v3: 20 at minute 5, less the later sale = 18
        event("ADJUSTED", "SKU-1", "WH-1", 1, 2),  # older than the count: SUPERSEDED, no change, keeps v3
        event("ORDER_PLACED", "SKU-1", "WH-1", 4, 9),  # WH-1 v4 committed 4
        event("SOLD", "SKU-1", "WH-2", 1, 9),  # WH-2 v2 onHand 6
        sold,  # the same event again: DUPLICATE, version of its first occurrence
    )
    assert result["userErrors"] == []
    assert [(r["status"], r["version"]) for r in result["results"]] == [
        ("APPLIED", 1),
        ("APPLIED", 1),
        ("APPLIED", 2),
        ("APPLIED", 3),
        ("SUPERSEDED", 3),
        ("APPLIED", 4),
        ("APPLIED", 2),
        ("DUPLICATE", 2),
    ]
    one, two = await level(api, "SKU-1", "WH-1"), await level(api, "SKU-1", "WH-2")
    assert (one["onHand"], one["committed"], one["version"]) == (18, 4, 4)
    assert (two["onHand"], two["version"]) == (6, 2)
