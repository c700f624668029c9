"""Reconciliation: a snapshot with known drift produces exactly that drift report, and can be applied."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from app.cli import cli
from app.db.engine import Database
from app.domain.events import EventType, InventoryEvent
from app.services import catalog, channel_reconciliation, events
from app.services.context import Ctx
from app.settings import Settings
from tests.conftest import Api
from tests.helpers import COMMIT, T0, UPSERT_LOCATIONS, at, catalogue, event, level, record, reserve

SNAPSHOT = """sku,location,on_hand,comment
SKU-1,WH-1,7,shipped more than was ordered here
SKU-2,WH-1,4,in step
SKU-1,WH-2,3,our count from the wrong source was flagged
SKU-3,WH-1,14,four went missing since the last count
SKU-9,WH-1,1,not in our catalogue
"""
IMPORT = """mutation($rows: [SnapshotRowInput!]!, $takenAt: DateTime!, $apply: Boolean!) {
  importSnapshot(source: "netsuite", takenAt: $takenAt, input: $rows, apply: $apply) {
    rows matched userErrors { code }
    drift { skuCode locationCode expected reported difference since applied
            explainedBy { type status drift externalId } } } }"""


async def _history(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2", "SKU-3"], locations=[("WH-1", 10), ("WH-2", 20)])
    data = await api.ok(
        UPSERT_LOCATIONS, input=[{"code": "WH-2", "name": "Two", "kind": "WAREHOUSE", "countAuthority": "wms"}]
    )
    assert data["upsertLocations"]["userErrors"] == []
    history = [
        event("RECEIVED", "SKU-1", "WH-1", 10, -60),
        event("ORDER_PLACED", "SKU-1", "WH-1", 3, -50),
        event("SHIPPED", "SKU-1", "WH-1", 5, -40, externalId="ship-1"),  # 2 more than committed: drift 2
        event("RECEIVED", "SKU-2", "WH-1", 4, -60),
        event("RECEIVED", "SKU-1", "WH-2", 6, -60),
        event("COUNTED", "SKU-1", "WH-2", 3, -30, externalId="count-wrong-source"),  # erp is not the authority
        event("COUNTED", "SKU-3", "WH-1", 20, -30),
        event("SOLD", "SKU-3", "WH-1", 2, -20),
        event("SOLD", "SKU-3", "WH-1", 1, 10),  # after the snapshot was taken: not drift
    ]
    for e in history:
        assert (await record(api, e))["userErrors"] == []


async def test_a_csv_snapshot_with_known_drift_reports_exactly_that_drift(api: Api, tmp_path: Path) -> None:
    await _history(api)
    path = tmp_path / "snapshot.csv"
    path.write_text(SNAPSHOT)
    seen: list[int] = []
    report = await channel_reconciliation.import_csv(api.ctx, path, "netsuite", T0, progress=seen.append)
    assert (report.rows, report.matched, seen) == (5, 1, [5])
    assert [(e.code.value, e.field) for e in report.unknown] == [("UNKNOWN_SKU", ("input", "4", "skuCode"))]
    got = [
        (
            d.sku_code,
            d.location_code,
            d.expected,
            d.reported,
            d.difference,
            d.since,
            [(c.kind, c.status, c.drift, c.external_id) for c in d.causes],
        )
        for d in report.drift
    ]
    assert got == [
        ("SKU-1", "WH-1", 5, 7, 2, T0 - timedelta(minutes=60), [("SHIPPED", "APPLIED", 2, "ship-1")]),
        (
            "SKU-1",
            "WH-2",
            6,
            3,
            -3,
            T0 - timedelta(minutes=60),
            [("COUNTED", "FLAGGED", 0, "count-wrong-source")],
        ),
        # expected is as of the snapshot (18), not now (17: a sale after it); since the last count
        ("SKU-3", "WH-1", 18, 14, -4, T0 - timedelta(minutes=30), []),
    ]
    # a report changes nothing
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 5


async def test_applying_a_snapshot_records_counts_at_its_time(api: Api) -> None:
    await _history(api)
    rows: list[dict[str, Any]] = [
        {"skuCode": s, "locationCode": loc, "onHand": q}
        for s, loc, q in (("SKU-1", "WH-1", 7), ("SKU-1", "WH-2", 3), ("SKU-3", "WH-1", 14))
    ]
    data = await api.ok(IMPORT, rows=rows, takenAt=at(0), apply=True)
    result = data["importSnapshot"]
    assert [(d["skuCode"], d["locationCode"], d["difference"], d["applied"]) for d in result["drift"]] == [
        ("SKU-1", "WH-1", 2, "APPLIED"),
        ("SKU-1", "WH-2", -3, "FLAGGED"),  # WH-2 trusts only wms's counts
        ("SKU-3", "WH-1", -4, "APPLIED"),
    ]
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 7
    assert (await level(api, "SKU-3", "WH-1"))["onHand"] == 13  # 14 at T0, then the later sale of 1
    again = (await api.ok(IMPORT, rows=rows, takenAt=at(0), apply=False))["importSnapshot"]
    assert (again["matched"], [d["locationCode"] for d in again["drift"]]) == (2, ["WH-2"])


def test_the_cli_prints_the_drift_and_applies_it(tmp_path: Path, new_database: Callable[[], str]) -> None:
    url = new_database()

    async def setup() -> None:
        db = Database(url)
        ctx = Ctx(db=db, settings=Settings(database_url=url))
        try:
            await catalog.upsert_skus(ctx, [catalog.SkuInput("SKU-1", "One")])
            await catalog.upsert_locations(ctx, [catalog.LocationInput("WH-1", "One", catalog.LocationKind.WAREHOUSE)])
            await events.record_events(
                ctx, [InventoryEvent("erp", "r1", EventType.RECEIVED, "SKU-1", "WH-1", 5, T0 - timedelta(hours=1))]
            )
        finally:
            await db.dispose()

    asyncio.run(setup())
    csv_path = tmp_path / "snapshot.csv"
    csv_path.write_text("sku,location,on_hand\nSKU-1,WH-1,8\n")
    args = ["import-snapshot", str(csv_path), "--source", "netsuite", "--taken-at", T0.isoformat()]
    env = {"STOCKWIRE_DATABASE_URL": url}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "DRIFT SKU-1 @ WH-1: expected 5, reported 8 (+3)" in result.output
    assert result.output.strip().splitlines()[-1] == "1 rows, 0 matched, 1 drifting, 0 skipped"
    applied = CliRunner().invoke(cli, [*args, "--apply"], env=env)
    assert applied.exit_code == 0, applied.output
    assert "[APPLIED]" in applied.output
    after = CliRunner().invoke(cli, args, env=env)
    assert after.output.strip().splitlines()[-1] == "1 rows, 1 matched, 0 drifting, 0 skipped"


# --- orphaned holds ------------------------------------------------------------------------------

HOLDS = """mutation($input: [ExternalHoldInput!]!) { recordExternalHolds(input: $input) {
  results { status } userErrors { code } } }"""
ORPHANS = """query($days: Int!) { orphanedHolds(committedOlderThanDays: $days) {
  kind id skuCode locationCode quantity since } }"""


async def test_orphaned_holds_are_reported_by_kind(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    for sku in ("SKU-1", "SKU-2"):
        assert (await record(api, event("RECEIVED", sku, "WH-1", 20)))["userErrors"] == []
    active = await reserve(api, [{"skuCode": "SKU-1", "quantity": 2}], ttlSeconds=3600)
    shipped_soon = await reserve(api, [{"skuCode": "SKU-2", "quantity": 3}])
    committed = await api.ok(COMMIT, id=shipped_soon["reservation"]["id"], orderRef="order-1")
    assert committed["commitReservation"]["userErrors"] == []
    hold = {"source": "amazon", "externalId": "cart-9", "action": "PLACE", "skuCode": "SKU-1", "locationCode": "WH-1"}
    expires = (api.ctx.clock() + timedelta(hours=1)).isoformat()
    data = await api.ok(HOLDS, input=[{**hold, "quantity": 4, "expiresAt": expires}])
    assert data["recordExternalHolds"]["userErrors"] == []

    # now nothing is past expiry, and the commitment is younger than 7 days
    assert (await api.ok(ORPHANS, days=7))["orphanedHolds"] == []
    # nobody ships it: with "older than 0 days" it is reported at once
    now = (await api.ok(ORPHANS, days=0))["orphanedHolds"]
    assert [(o["kind"], o["id"], o["skuCode"], o["quantity"]) for o in now] == [
        ("COMMITTED_NOT_SHIPPED", shipped_soon["reservation"]["id"], "SKU-2", 3)
    ]

    # seen from eight days on, as if the sweeper had been down all along: every kind, oldest first per kind
    later = Ctx(db=api.ctx.db, settings=api.ctx.settings, clock=lambda: datetime.now(UTC) + timedelta(days=8))
    found = await channel_reconciliation.orphaned_holds(later, committed_days=7)
    assert [(o.kind, o.id, o.sku_code, o.location_code, o.quantity) for o in found] == [
        ("RESERVATION_PAST_EXPIRY", active["reservation"]["id"], "SKU-1", "WH-1", 2),
        ("EXTERNAL_HOLD_PAST_EXPIRY", "amazon/cart-9", "SKU-1", "WH-1", 4),
        ("COMMITTED_NOT_SHIPPED", shipped_soon["reservation"]["id"], "SKU-2", "WH-1", 3),
    ]
    # shipping the order takes it off the report
    assert (await record(api, event("SHIPPED", "SKU-2", "WH-1", 3)))["userErrors"] == []
    assert (await api.ok(ORPHANS, days=0))["orphanedHolds"] == []
    # a negative number of days is a clear error
    response = await api.raw(ORPHANS, days=-1)
    assert "committedOlderThanDays must be between 0 and 36500" in response.json()["errors"][0]["message"]


async def test_a_large_snapshot_is_compared_in_chunks_with_progress(api: Api, tmp_path: Path) -> None:
    # 1,000 rows over 500 SKUs at two locations: two chunks, each reading 500 positions at once
    skus = [f"S{i:03d}" for i in range(500)]
    await catalogue(api, skus=skus, locations=[("WH-1", 10), ("WH-2", 20)])
    history = [event("RECEIVED", s, loc, 5, -60) for s in skus for loc in ("WH-1", "WH-2")]
    for start in range(0, len(history), 250):
        assert (await record(api, *history[start : start + 250]))["userErrors"] == []
    drifting = {("S007", "WH-2"): 9, ("S499", "WH-1"): 0}
    lines = ["sku,location,on_hand"] + [
        f"{s},{loc},{drifting.get((s, loc), 5)}" for s in skus for loc in ("WH-1", "WH-2")
    ]
    path = tmp_path / "large.csv"
    path.write_text("\n".join(lines) + "\n")
    seen: list[int] = []
    report = await channel_reconciliation.import_csv(api.ctx, path, "netsuite", T0, progress=seen.append)
    assert (report.rows, report.matched, seen, report.unknown) == (1000, 998, [500, 500], [])
    assert [(d.sku_code, d.location_code, d.expected, d.reported) for d in report.drift] == [
        ("S007", "WH-2", 5, 9),
        ("S499", "WH-1", 5, 0),
    ]
