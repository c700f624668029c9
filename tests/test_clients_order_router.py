"""clients/examples/order_router.py against a live server (a fresh PostgreSQL database): it routes
orders with routeAndReserve, holds their stock once, parks orders short of stock and routes them when
its stockLevelChanged subscription shows the stock arriving; the command line does the same from JSON lines on stdin."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import UPSERT_LOCATIONS
from tests.live import Server, start_server, stop_server
from tests.subscribers import TIMEOUT, Http, http_client, unique

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "examples"))

from order_router import REJECTED, ROUTED, WAITING, OrderRouter, Outcome, StockLevel, StockwireError

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # one live server process for the module

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "examples" / "order_router.py"
DENVER = {"latitude": 39.7392, "longitude": -104.9903}
NEW_YORK = {"latitude": 40.7128, "longitude": -74.0060}
STOCK_FOR_ORDER = """query($ref: String!) { routingDecisions(orderRef: $ref) {
  outcome reservationId reason shipments { locationCode lines { skuCode quantity } } } }"""


@pytest.fixture(scope="module")
def server(client_database: dict[str, Any]) -> Iterator[Server]:
    live = start_server(client_database["url"], key=client_database["keys"]["all"])
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def router_key(client_database: dict[str, Any]) -> str:
    """The router runs with the `router` scope only, as the README tells operators to give it."""
    return str(client_database["keys"]["router"])


@pytest.fixture(scope="module")
def storefront_key(client_database: dict[str, Any]) -> str:
    return str(client_database["keys"]["storefront"])


@pytest.fixture
async def http(server: Server) -> AsyncIterator[Http]:
    async with http_client(server.url, server.key) as client:
        yield Http(client)


async def _two_warehouses(http: Http, skus: list[str]) -> tuple[str, str]:
    """A warehouse in Denver and one in New York; returns their codes."""
    denver, new_york = unique("DEN"), unique("NYC")
    await http.catalogue(skus, [])
    data = await http.ok(
        UPSERT_LOCATIONS,
        input=[
            {"code": denver, "name": "Denver", "kind": "WAREHOUSE", **DENVER},
            {"code": new_york, "name": "New York", "kind": "WAREHOUSE", **NEW_YORK},
        ],
    )
    assert data["upsertLocations"]["userErrors"] == []
    return denver, new_york


def _router(server: Server, key: str, locations: list[str], outcomes: list[Outcome]) -> OrderRouter:
    return OrderRouter(
        url=f"{server.url}/graphql",
        api_key=key,
        locations=locations,
        on_outcome=outcomes.append,
    )


async def _reserved(http: Http, sku: str) -> dict[str, int]:
    return {lv["locationCode"]: lv["reserved"] for lv in (await http.levels([sku])).values()}


async def test_routes_to_the_closest_location_and_holds_the_stock_once(
    server: Server, http: Http, router_key: str
) -> None:
    sku = unique("TEE")
    denver, new_york = await _two_warehouses(http, [sku])
    await http.event("RECEIVED", sku, denver, 5)
    await http.event("RECEIVED", sku, new_york, 5)
    order = {"orderRef": unique("SO"), "lines": [{"skuCode": sku, "quantity": 2}], "destination": DENVER}
    outcomes: list[Outcome] = []

    async with _router(server, router_key, [denver, new_york], outcomes) as router:
        first = await router.submit(order)
        again = await router.submit(order)  # a retry of the same order: idempotent by orderRef

    assert first.status == ROUTED
    assert first.shipments == ((denver, ((sku, 2),)),)
    assert first.reason.startswith(f"{denver} ships all 1 line")
    assert again.status == ROUTED and again.reservation_id == first.reservation_id
    assert [o.status for o in outcomes] == [ROUTED, ROUTED]
    assert await _reserved(http, sku) == {denver: 2, new_york: 0}
    # the decision is stored and can be read back by the order reference
    decisions = (await http.ok(STOCK_FOR_ORDER, ref=order["orderRef"]))["routingDecisions"]
    assert [(d["outcome"], d["reservationId"]) for d in decisions] == [("RESERVED", first.reservation_id)]
    assert decisions[0]["shipments"] == [{"locationCode": denver, "lines": [{"skuCode": sku, "quantity": 2}]}]


async def test_an_order_short_of_stock_waits_and_is_routed_when_stock_arrives(
    server: Server, http: Http, router_key: str
) -> None:
    sku, other = unique("MUG"), unique("CAP")
    denver, new_york = await _two_warehouses(http, [sku, other])
    await http.event("RECEIVED", sku, new_york, 1)
    await http.event("RECEIVED", other, denver, 4)
    order = {"orderRef": unique("SO"), "lines": [{"skuCode": sku, "quantity": 3}], "destination": DENVER}
    outcomes: list[Outcome] = []
    routed = asyncio.Event()

    def note(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if outcome.status == ROUTED:
            routed.set()

    async with _router(server, router_key, [denver, new_york], []) as router:
        router.on_outcome = note
        snapshot = asyncio.Event()
        note_level = router.note_level

        def watched(level: StockLevel) -> list[dict[str, Any]]:
            woken = note_level(level)
            if {(sku, new_york), (other, denver)} <= router.stock.keys():
                snapshot.set()
            return woken

        router.note_level = watched  # type: ignore[method-assign]
        watcher = asyncio.create_task(router.watch_stock())
        try:
            await asyncio.wait_for(snapshot.wait(), TIMEOUT)  # the current levels have all arrived
            assert router.stock[(sku, new_york)] == 1
            waiting = await router.submit(order)
            assert waiting.status == WAITING
            assert waiting.errors[0][0] == "INSUFFICIENT_STOCK"
            assert order["orderRef"] in router.waiting
            assert await _reserved(http, sku) == {new_york: 0}  # a refusal holds nothing

            await http.event("RECEIVED", other, new_york, 9)  # stock of another SKU wakes nobody
            await http.event("RECEIVED", sku, denver, 3)  # now Denver can ship the whole line
            await asyncio.wait_for(routed.wait(), TIMEOUT)  # no call from the test: the subscription did it
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    assert [o.status for o in outcomes] == [WAITING, ROUTED]
    assert outcomes[-1].shipments == ((denver, ((sku, 3),)),)
    assert router.waiting == {}
    assert await _reserved(http, sku) == {denver: 3, new_york: 0}
    decisions = (await http.ok(STOCK_FOR_ORDER, ref=order["orderRef"]))["routingDecisions"]
    # both attempts are on record: why it waited, then where it went
    assert [d["outcome"] for d in decisions] == ["REFUSED", "RESERVED"]
    assert decisions[1]["reservationId"] == outcomes[-1].reservation_id


async def test_bad_orders_are_rejected_not_kept_waiting(server: Server, http: Http, router_key: str) -> None:
    sku = unique("HAT")
    denver, new_york = await _two_warehouses(http, [sku])
    outcomes: list[Outcome] = []
    async with _router(server, router_key, [denver, new_york], outcomes) as router:
        unknown = await router.submit({"orderRef": unique("SO"), "lines": [{"skuCode": "NO-SUCH", "quantity": 1}]})
        zero = await router.submit({"orderRef": unique("SO"), "lines": [{"skuCode": sku, "quantity": 0}]})
    assert (unknown.status, unknown.errors[0][0]) == (REJECTED, "UNKNOWN_SKU")
    assert (zero.status, zero.errors[0][0]) == (REJECTED, "INVALID_QUANTITY")
    assert router.waiting == {}


async def test_a_key_without_the_router_scope_is_refused(server: Server, storefront_key: str) -> None:
    async with _router(server, storefront_key, ["ANY"], []) as router:
        with pytest.raises(StockwireError, match=r"FORBIDDEN|scope|permission"):
            await router.submit({"orderRef": unique("SO"), "lines": [{"skuCode": "X", "quantity": 1}]})


async def test_the_command_line_routes_json_lines_from_stdin(server: Server, http: Http, router_key: str) -> None:
    sku = unique("SOCK")
    denver, new_york = await _two_warehouses(http, [sku])
    await http.event("RECEIVED", sku, new_york, 2)
    now, later = unique("SO"), unique("SO")
    orders = [
        {"orderRef": now, "lines": [{"skuCode": sku, "quantity": 2}], "destination": DENVER},
        {"orderRef": later, "lines": [{"skuCode": sku, "quantity": 1}], "destination": DENVER},
    ]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        "--url",
        f"{server.url}/graphql",
        "--key",
        router_key,
        "--locations",
        f"{denver},{new_york}",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("".join(json.dumps(o) + "\n" for o in orders).encode() + b"not json\n")
        await process.stdin.drain()
        process.stdin.close()  # the input ends: it exits once no order waits any more
        lines: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while len(lines) < 3:
                lines.append((await process.stdout.readline()).decode().strip())
        assert lines[0].startswith(f"ROUTED   {now}  reservation ")
        assert f"[{new_york}: {sku} x2]" in lines[0]
        assert lines[1].startswith(f"WAITING  {later}  INSUFFICIENT_STOCK")
        assert lines[2].startswith("SKIPPED  not an order")

        await http.event("RECEIVED", sku, denver, 1)
        async with asyncio.timeout(TIMEOUT):
            rest = (await process.stdout.read()).decode().splitlines()
            code = await process.wait()
        assert code == 0
        assert len(rest) == 1 and rest[0].startswith(f"ROUTED   {later}  reservation ")
        assert f"[{denver}: {sku} x1]" in rest[0]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert await _reserved(http, sku) == {denver: 1, new_york: 2}
