"""The one-position checkout on the asyncpg connection (issue 15, target 1: `Database.write_driver`,
reserving._reserve_named on its asyncpg connection) answers exactly as the general path does, and leaves the same rows.

One history of reserves runs on SKU-1 by the fast path and on SKU-2 by the general one (the fast path
switched off); their answers and positions must be the same, SKU codes and reservation ids aside."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from app.db import pg, tenancy
from app.db.engine import Database
from app.services import integrity
from app.services.reservations import reserving
from tests.conftest import Api
from tests.helpers import RESERVE, catalogue, receive


def _history(sku: str) -> list[dict[str, Any]]:
    def line(quantity: int, sku: str = sku, at: str = "WH-1") -> dict[str, Any]:
        return {"skuCode": sku, "quantity": quantity, "locationCode": at}

    return [
        {"lines": [line(2)], "idempotencyKey": sku + "-a", "cartRef": "c1"},
        # the same call again: the first reservation, nothing more held (a repeat: the general path answers)
        {"lines": [line(2)], "idempotencyKey": sku + "-a", "cartRef": "c1"},
        # the same key for another request: refused as a repeat with other lines
        {"lines": [line(1)], "idempotencyKey": sku + "-a"},
        {"lines": [line(3)], "idempotencyKey": sku + "-b"},
        # more than is left: the exact shortfall
        {"lines": [line(3)], "idempotencyKey": sku + "-c"},
        # the refused key is free again
        {"lines": [line(1)], "idempotencyKey": sku + "-c"},
        {"lines": [line(1)], "idempotencyKey": sku + "-d"},
        {"lines": [line(1, at="NOWHERE")], "idempotencyKey": sku + "-e"},
        {"lines": [line(1, sku=sku + "-NONE")], "idempotencyKey": sku + "-f"},
        {"lines": [line(0)], "idempotencyKey": sku + "-g"},
        {"lines": [line(1), line(1)], "idempotencyKey": sku + "-h"},
    ]


def _normalised(body: dict[str, Any], sku: str, ids: dict[str, str]) -> str:
    text = repr(body)
    for rid in re.findall(r"'id': '([^']+)'", text):
        ids.setdefault(rid, f"R{len(ids)}")
        text = text.replace(rid, ids[rid])
    text = re.sub(r"'expiresAt': '[^']+'", "'expiresAt': T", text)
    return text.replace(sku, "SKU")


async def _run(api: Api, sku: str) -> list[str]:
    ids: dict[str, str] = {}
    answers = []
    for payload in _history(sku):
        response = await api.raw(RESERVE, input=payload)
        assert response.status_code == 200
        answers.append(_normalised(response.json(), sku, ids))
    return answers


async def _position(api: Api, sku: str) -> tuple[Any, ...]:
    rows = await api.sql(
        "SELECT p.reserved, p.version, (SELECT count(*) FROM inventory_events e WHERE e.sku_id = s.id), "
        "(SELECT count(*) FROM reservation_lines l WHERE l.sku_id = s.id), "
        "(SELECT round(coalesce(sum(d.units), 0)::numeric, 2) FROM sku_demand d WHERE d.sku_id = s.id) "
        "FROM skus s JOIN stock_levels p ON p.sku_id = s.id WHERE s.code = :code",
        code=sku,
    )
    return tuple(rows[0])


async def test_the_fast_path_answers_and_writes_as_the_general_path(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    for sku in ("SKU-1", "SKU-2"):
        await receive(api, sku, "WH-1", 6)
    taken: list[str] = []
    write_driver = Database.write_driver

    async def counted(self: Database, work: Any, notify: bool = True) -> Any:
        try:
            result = await write_driver(self, work, notify)
        except reserving._Elsewhere:
            taken.append("elsewhere")
            raise
        except Exception as exc:
            taken.append(type(exc).__name__)
            raise
        taken.append("answered")
        return result

    monkeypatch.setattr(Database, "write_driver", counted)
    fast = await _run(api, "SKU-1")
    # the repeats went the general way; refusals were the fast path's own; bad input never reached it
    assert taken == [
        "answered",
        "elsewhere",
        "elsewhere",
        "answered",
        "Refused",
        "answered",
        "Refused",
        "Refused",
        "Refused",
    ]
    monkeypatch.setitem(reserving._dynamic_seen, api.ctx.db, float("inf"))  # the fast path off
    taken.clear()
    general = await _run(api, "SKU-2")
    assert taken == []
    assert fast == general
    assert "SKU: 3 requested at WH-1, 1 available" in fast[4]
    assert "SKU: 1 requested at WH-1, 0 available" in fast[6]
    assert "'id': 'R0'" in fast[1] and "IDEMPOTENCY_CONFLICT" in fast[2]
    assert await _position(api, "SKU-1") == await _position(api, "SKU-2")
    assert await integrity.check(api.ctx) == []


UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) { userErrors { code } } }"""
DEMAND = """query($channel: String!, $skus: [String!]!) { channelDemand(channelCode: $channel, skuCodes: $skus) {
  target applied } }"""


async def test_a_dynamic_buffer_sends_one_position_checkouts_the_general_way(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.ctx.db not in reserving._dynamic_seen  # a fresh database: no buffer seen yet
    calls: list[int] = []
    write_driver = Database.write_driver

    async def counted(self: Database, work: Any, notify: bool = True) -> Any:
        calls.append(1)
        return await write_driver(self, work, notify)

    monkeypatch.setattr(Database, "write_driver", counted)
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 50)
    channel = {"code": "MKT", "name": "Marketplace", "locationCodes": ["WH-1"], "syncLagSeconds": 3600}
    data = await api.ok(UPSERT_CHANNELS, input=[{**channel, "dynamicBufferFactor": 1.0}])
    assert data["upsertChannels"]["userErrors"] == []
    line = {"skuCode": "SKU-1", "quantity": 6, "locationCode": "WH-1"}
    held = (await api.ok(RESERVE, input={"lines": [line], "idempotencyKey": "x"}))["reserve"]
    assert held["userErrors"] == [] and held["reservation"]["lines"][0]["quantity"] == 6
    assert calls == [1] and reserving._dynamic_seen[api.ctx.db] > float("-inf")  # tried, found the buffer, went general
    # the general path moved the buffer: 6 units an hour-long lag, 6 x ln2 = 4.16 -> 5
    [d] = (await api.ok(DEMAND, channel="MKT", skus=["SKU-1"]))["channelDemand"]
    assert (d["target"], d["applied"]) == (5, 5)
    # meanwhile the next checkouts go the general way at once (no attempt to roll back)
    line["quantity"] = 1
    assert (await api.ok(RESERVE, input={"lines": [line], "idempotencyKey": "y"}))["reserve"]["userErrors"] == []
    assert calls == [1]
    assert await _position(api, "SKU-1") == (7, 3, 3, 2, Decimal("7.00"))
    assert await integrity.check(api.ctx) == []


async def test_a_driver_transaction_is_scoped_committed_and_fails_as_sqlalchemy_does(database_url: str) -> None:
    db = Database(database_url, pool_size=1, max_overflow=0, role=None)
    try:

        async def scoped(conn: Any) -> Any:
            # the tenant came with the BEGIN (_ScopedConnection), as in every transaction of `write`
            return await conn.fetchval("SELECT current_setting('stockwire.tenant_id', true)")

        with tenancy.acting_for(7):
            assert await db.write_driver(scoped) == "7"
        calls: list[int] = []

        async def deadlocked_once(conn: Any) -> str:
            calls.append(1)
            if len(calls) == 1:
                await pg.run(conn.execute, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$")
            return "done"

        assert await db.write_driver(deadlocked_once) == "done" and len(calls) == 2  # retried like `write`

        async def breaks_at_commit(conn: Any) -> None:
            await conn.execute(
                "CREATE TEMP TABLE probe (v int UNIQUE DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP; "
                "INSERT INTO probe VALUES (1), (1)"
            )

        with pytest.raises(IntegrityError):  # the COMMIT's error, raised as SQLAlchemy's (pg.run's rule)
            await db.write_driver(breaks_at_commit)
        pool: Any = db.engine.sync_engine.pool
        assert pool.checkedout() == 0
        assert await db.write_driver(scoped) == "1"  # the pooled connection is clean again
    finally:
        await db.dispose()
