"""routeAndReserve under contention: two orders race for the last units at the closest location.

Both orders read the stock before either holds (a barrier after the first read of each makes the race
certain rather than likely). The winner takes the units; the loser's conditional hold finds them gone,
its transaction rolls back, and it routes again on a fresh read: to the next location when one has
the units, refused otherwise. Never both at one location beyond its stock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from app.domain.reservations import RequestedLine
from app.services import integrity, routing
from app.services.routing import RouteOrderRequest
from app.services.routing import inputs as routing_inputs
from tests.conftest import Api
from tests.helpers import UPSERT_LOCATIONS, catalogue, level, receive

pytestmark = pytest.mark.postgres

BOULDER = (40.01, -105.27)
PLACES = [
    {"code": "DEN", "name": "Denver", "kind": "WAREHOUSE", "latitude": 39.74, "longitude": -104.99},
    {"code": "CHI", "name": "Chicago", "kind": "WAREHOUSE", "latitude": 41.88, "longitude": -87.63},
]


@pytest.fixture
def both_read_first(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The first read of each of two calls waits for the other's: both route on the same stock. Both
    ways of reading are held back: `load` (the general path) and `load_on` (the driver path)."""
    barrier = asyncio.Barrier(2)
    reads: list[str] = []

    def held_back(original: Any) -> Any:
        async def load(conn: Any, req: RouteOrderRequest, *args: Any) -> Any:
            setting = await original(conn, req, *args)
            first = req.order_ref not in reads
            reads.append(req.order_ref)
            if first:
                await asyncio.wait_for(barrier.wait(), timeout=10)
            return setting

        return load

    monkeypatch.setattr(routing_inputs, "load", held_back(routing_inputs.load))
    monkeypatch.setattr(routing_inputs, "load_on", held_back(routing_inputs.load_on))
    yield reads


async def _setup(api: Api, denver: int, chicago: int) -> None:
    await catalogue(api, skus=["HOT"], locations=[])
    data = await api.ok(UPSERT_LOCATIONS, input=PLACES)
    assert data["upsertLocations"]["userErrors"] == []
    await receive(api, "HOT", "DEN", denver)
    if chicago:
        await receive(api, "HOT", "CHI", chicago)


def _order(ref: str, quantity: int) -> RouteOrderRequest:
    return RouteOrderRequest(order_ref=ref, lines=[RequestedLine("HOT", quantity)], destination=BOULDER)


async def test_the_loser_is_routed_to_the_next_location(api: Api, both_read_first: list[str]) -> None:
    await _setup(api, denver=2, chicago=5)
    a, b = await asyncio.gather(
        routing.route_and_reserve(api.ctx, _order("o-a", 2)),
        routing.route_and_reserve(api.ctx, _order("o-b", 2)),
    )
    # both routed to Denver on the same read; exactly one read again
    assert sorted(both_read_first) == ["o-a", "o-a", "o-b"] or sorted(both_read_first) == ["o-a", "o-b", "o-b"]
    assert a.errors == () and b.errors == ()
    assert a.reservation is not None and b.reservation is not None
    placed = sorted((ln.location_code, ln.quantity) for r in (a.reservation, b.reservation) for ln in r.lines)
    assert placed == [("CHI", 2), ("DEN", 2)]
    den, chi = await level(api, "HOT", "DEN"), await level(api, "HOT", "CHI")
    assert (den["reserved"], den["available"]) == (2, 0)
    assert (chi["reserved"], chi["available"]) == (2, 3)
    # each stored decision says where its order went
    stored = {
        ref: [s.location_code for s in (await routing.decisions_for_order(api.ctx, ref))[0].shipments]
        for ref in ("o-a", "o-b")
    }
    assert sorted(stored.values()) == [["CHI"], ["DEN"]]
    assert await integrity.check(api.ctx) == []


async def test_the_loser_is_refused_when_no_other_location_has_the_units(api: Api, both_read_first: list[str]) -> None:
    await _setup(api, denver=2, chicago=0)
    a, b = await asyncio.gather(
        routing.route_and_reserve(api.ctx, _order("o-a", 2)),
        routing.route_and_reserve(api.ctx, _order("o-b", 2)),
    )
    outcomes = sorted((r.reservation is not None, tuple(e.code.value for e in r.errors)) for r in (a, b))
    assert outcomes == [(False, ("INSUFFICIENT_STOCK",)), (True, ())]
    den = await level(api, "HOT", "DEN")
    assert (den["reserved"], den["available"]) == (2, 0)
    assert len(await api.sql("SELECT id FROM reservations")) == 1
    kinds = []
    for ref in ("o-a", "o-b"):
        kinds += [d.outcome for d in await routing.decisions_for_order(api.ctx, ref)]
    assert sorted(kinds) == ["REFUSED", "RESERVED"]
    assert await integrity.check(api.ctx) == []


async def test_many_concurrent_orders_never_oversell_any_location(api: Api) -> None:
    """40 orders over HTTP for 30 units spread over two locations: exactly the stock is held."""
    await _setup(api, denver=12, chicago=18)
    query = """mutation($input: RouteOrderInput!) { routeAndReserve(input: $input) {
      reservation { lines { locationCode quantity } } userErrors { code } } }"""

    async def order(i: int) -> dict[str, Any]:
        variables = {
            "input": {
                "orderRef": f"o-{i}",
                "lines": [{"skuCode": "HOT", "quantity": 1}],
                "destination": {"latitude": BOULDER[0], "longitude": BOULDER[1]},
            }
        }
        return await api.ok(query, **variables)

    results = [r["routeAndReserve"] for r in await asyncio.gather(*(order(i) for i in range(40)))]
    won = [r for r in results if r["reservation"] is not None]
    lost = [r for r in results if r["reservation"] is None]
    assert len(won) == 30
    assert {e["code"] for r in lost for e in r["userErrors"]} == {"INSUFFICIENT_STOCK"}
    by_location: dict[str, int] = {}
    for r in won:
        for ln in r["reservation"]["lines"]:
            by_location[ln["locationCode"]] = by_location.get(ln["locationCode"], 0) + ln["quantity"]
    assert by_location == {"DEN": 12, "CHI": 18}
    for loc, held in by_location.items():
        row = await level(api, "HOT", loc)
        assert (row["reserved"], row["available"]) == (held, 0)
    assert await integrity.check(api.ctx) == []


async def test_under_a_channel_the_loser_is_routed_to_the_next_location(api: Api, both_read_first: list[str]) -> None:
    """The channel's rules are enforced behind its (channel, SKU) lock: the loser waits there while the
    winner commits, finds Denver's units gone, and routes again on a fresh read."""
    await _setup(api, denver=2, chicago=5)
    data = await api.ok(
        """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) { userErrors { code } } }""",
        input=[{"code": "WEB", "name": "Web", "locationCodes": ["DEN", "CHI"]}],
    )
    assert data["upsertChannels"]["userErrors"] == []
    a, b = await asyncio.gather(
        routing.route_and_reserve(api.ctx, replace(_order("o-a", 2), channel_code="WEB")),
        routing.route_and_reserve(api.ctx, replace(_order("o-b", 2), channel_code="WEB")),
    )
    assert a.errors == () and b.errors == ()
    assert a.reservation is not None and b.reservation is not None
    placed = sorted((ln.location_code, ln.quantity) for r in (a.reservation, b.reservation) for ln in r.lines)
    assert placed == [("CHI", 2), ("DEN", 2)]
    den, chi = await level(api, "HOT", "DEN"), await level(api, "HOT", "CHI")
    assert (den["reserved"], den["available"]) == (2, 0)
    assert (chi["reserved"], chi["available"]) == (2, 3)
    holds = await api.sql("SELECT reserved, backordered FROM channel_holds")
    assert [(int(h.reserved), int(h.backordered)) for h in holds] == [(4, 0)]
    assert await integrity.check(api.ctx) == []
