"""The ops console in a real browser: sign in, see a figure, watch it change live (no reload, no polling)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from app.security.scopes import Scope
from tests.conftest import _truncate, create_test_key
from tests.live import Server, start_server, stop_server
from tests.ops_browser import chromium, screenshot_path

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def gql(server: Server, query: str, **variables: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/graphql", json={"query": query, "variables": variables}, headers=server.headers)
    body = r.json()
    assert r.status_code == 200 and "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def record(server: Server, external_id: str, kind: str, sku: str, location: str, quantity: int) -> None:
    data = gql(
        server,
        """mutation($e: [InventoryEventInput!]!) { recordInventoryEvents(input: $e) {
             results { status } userErrors { code message } } }""",
        e=[
            {
                "source": "wms",
                "externalId": external_id,
                "type": kind,
                "skuCode": sku,
                "locationCode": location,
                "quantity": quantity,
                "occurredAt": "2026-01-05T10:00:00Z",
                "reason": "browser test",
            }
        ],
    )
    assert data["recordInventoryEvents"]["userErrors"] == []


@pytest.fixture
def server(postgres_url: str) -> Iterator[Server]:
    asyncio.run(_truncate(postgres_url))
    started = start_server(postgres_url)
    try:
        gql(
            started,
            """mutation { upsertLocations(input: [
                 {code: "WH-EAST", name: "East warehouse", kind: WAREHOUSE},
                 {code: "STORE-NYC", name: "New York store", kind: STORE}]) { userErrors { code } } }""",
        )
        gql(
            started,
            """mutation { upsertSkus(input: [{code: "TEE-BLK-M", name: "Tee black M"},
                 {code: "TEE-BLK-L", name: "Tee black L"}, {code: "CAP-RED", name: "Cap red"}]) {
                 userErrors { code } } }""",
        )
        record(started, "r-1", "RECEIVED", "TEE-BLK-M", "WH-EAST", 12)
        record(started, "r-2", "RECEIVED", "TEE-BLK-M", "STORE-NYC", 3)
        record(started, "r-3", "RECEIVED", "CAP-RED", "WH-EAST", 5)
        yield started
    finally:
        stop_server(started)


def test_the_grid_changes_live_when_an_event_is_recorded(server: Server, postgres_url: str) -> None:
    operator_key = asyncio.run(create_test_key(postgres_url, frozenset({Scope.ADMIN})))  # admin only
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{server.url}/ops")
        page.fill("#key", operator_key)
        page.click("#signin-form button[type=submit]")

        cell = page.locator('td.cell[data-sku="TEE-BLK-M"][data-loc="WH-EAST"]')
        cell.wait_for()
        expect(cell).to_have_text("12", timeout=10_000)
        page.locator("#live.on").wait_for(timeout=10_000)  # the subscription's socket is acknowledged
        assert page.evaluate("sessionStorage.getItem('stockwire.operatorKey')") == operator_key

        page.evaluate("window.notReloaded = true")
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/graphql" in r.url else None)
        record(server, "s-1", "SOLD", "TEE-BLK-M", "WH-EAST", 5)

        expect(cell).to_have_text("7", timeout=10_000)
        assert page.evaluate("window.notReloaded") is True  # the same page, no reload
        assert calls == []  # it came over the websocket: no HTTP call at all, so no polling
        assert page.locator('tr[data-sku="TEE-BLK-M"] td.total').text_content() == "10"  # 7 + 3
        page.screenshot(path=screenshot_path("ops_grid.png"), full_page=True)

        # the SKU's page: its ledger says who, what, when and why
        page.click('a[href="#/sku/TEE-BLK-M"]')
        ledger = page.locator("#ledger tbody tr")
        ledger.first.wait_for()
        first = ledger.first.text_content() or ""
        assert "SOLD" in first and "wms" in first and "browser test" in first
        # who: the reporting system and the key that recorded it (the ledger's actor)
        assert "wms by tests (every scope)" in first, first
        assert ledger.count() == 3
        page.screenshot(path=screenshot_path("ops_sku.png"), full_page=True)
