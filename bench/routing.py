"""Latency of order routing: a 20-line order over 200 locations on PostgreSQL.

    .venv/bin/python bench/routing.py [--orders 300] [--locations 200] [--skus 100] [--lines 20] [--keep-db]

On demand only (not part of the test suite). One run:
 1. re-creates the database `stockwire_bench_routing`, migrates it (`stockwire migrate`) and starts
    `uvicorn app.main:create_app --factory` on a free port (STOCKWIRE_BROADCAST_URL=memory://);
 2. loads, through the API, `--locations` locations scattered over the continental US (priorities and
    shipping costs vary) and `--skus` SKUs; each location stocks ~60 % of the SKUs (RECEIVED events);
 3. in-process reference: the pure `app.domain.routing.route` alone on the same shape of input;
 4. routeOrder (the dry run), `--orders` calls one after another over one keep-alive connection, each
    a random order of `--lines` distinct SKUs (1-3 units) to a random US destination; once asking for
    the shipments and the reason, once also for all 200 candidates' scores;
 5. routeAndReserve, `--orders` calls the same way (unique orderRef each), all holding stock;
 6. prints p50/p90/p99/max per operation against the target (routeOrder p99 <= 20 ms), how many
    shipments the orders split into, and a sanity check: the units reserved in stock_levels equal the
    units of the successful reservations, and the stored decisions equal the successful calls.
The server is always killed (finally). With the defaults the whole run takes well under 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    RawHttp,
    Server,
    create_api_key,
    drop_database,
    graphql,
    migrate,
    pg_dsn,
    recreate_database,
    sa_url,
    say,
    set_api_key,
    start_server,
    wait_ready,
)

DB = "stockwire_bench_routing"
TARGET_P99_MS = 20.0
# the continental US, roughly
LAT, LON = (25.0, 49.0), (-124.0, -67.0)

UPSERT_SKUS = "mutation($input: [SkuInput!]!) { upsertSkus(input: $input) { userErrors { code message } } }"
UPSERT_LOCATIONS = (
    "mutation($input: [LocationInput!]!) { upsertLocations(input: $input) { userErrors { code message } } }"
)
SET_ROUTING = (
    "mutation($input: [LocationRoutingInput!]!) { setLocationRouting(input: $input) { userErrors { code message } } }"
)
RECORD = (
    "mutation($input: [InventoryEventInput!]!) { recordInventoryEvents(input: $input) { userErrors { code message } } }"
)
SHIPMENTS = "shipments { locationCode lines { skuCode quantity } } userErrors { code message } reason"
ROUTE_ORDER = f"query($input: RouteOrderInput!) {{ routeOrder(input: $input) {{ {SHIPMENTS} }} }}"
ROUTE_ORDER_SCORES = (
    f"query($input: RouteOrderInput!) {{ routeOrder(input: $input) {{ {SHIPMENTS} "
    "candidates { locationCode rank excluded coversLines coversUnits distanceKm priority shippingCost } } }"
)
ROUTE_AND_RESERVE = (
    f"mutation($input: RouteOrderInput!) {{ routeAndReserve(input: $input) {{ decision {{ {SHIPMENTS} }} "
    "reservation { id lines { skuCode locationCode quantity } } userErrors { code message } } }"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def row(label: str, ms: list[float], target: float | None = None) -> str:
    p99 = pct(ms, 0.99)
    verdict = "" if target is None else ("  target p99 <= 20 ms: " + ("MET" if p99 <= target else "MISSED"))
    return (
        f"{label:<34} n={len(ms):4d}  p50 {pct(ms, 0.5):6.2f} ms  p90 {pct(ms, 0.9):6.2f} ms  "
        f"p99 {p99:6.2f} ms  max {max(ms):6.2f} ms{verdict}"
    )


async def call(client: RawHttp, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    if "errors" in body:
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    data: dict[str, Any] = body["data"]
    return data


async def load(client: RawHttp, rnd: random.Random, n_locations: int, n_skus: int) -> list[str]:
    skus = [f"R-{i:04d}" for i in range(n_skus)]
    errors = (await call(client, UPSERT_SKUS, {"input": [{"code": c, "name": c} for c in skus]}))["upsertSkus"]
    assert errors["userErrors"] == [], errors
    locations = [
        {
            "code": f"L-{i:03d}",
            "name": f"Location {i}",
            "kind": "WAREHOUSE" if i % 4 else "STORE",
            "latitude": round(rnd.uniform(*LAT), 4),
            "longitude": round(rnd.uniform(*LON), 4),
            "priority": rnd.choice([10, 50, 100]),
        }
        for i in range(n_locations)
    ]
    result = (await call(client, UPSERT_LOCATIONS, {"input": locations}))["upsertLocations"]
    assert result["userErrors"] == [], result
    settings = [{"locationCode": loc["code"], "shippingCost": f"{rnd.uniform(3, 15):.2f}"} for loc in locations]
    result = (await call(client, SET_ROUTING, {"input": settings}))["setLocationRouting"]
    assert result["userErrors"] == [], result
    events = [
        {
            "source": "bench",
            "externalId": f"{loc['code']}/{sku}",
            "type": "RECEIVED",
            "skuCode": sku,
            "locationCode": loc["code"],
            "quantity": rnd.randint(5, 60),
            "occurredAt": "2026-01-01T00:00:00Z",
        }
        for loc in locations
        for sku in skus
        if rnd.random() < 0.6
    ]
    for start in range(0, len(events), 1000):
        result = (await call(client, RECORD, {"input": events[start : start + 1000]}))["recordInventoryEvents"]
        assert result["userErrors"] == [], result["userErrors"][:3]
    say(f"loaded {n_skus} SKUs, {n_locations} locations, {len(events)} stocked positions")
    return skus


def random_order(rnd: random.Random, skus: list[str], n_lines: int, ref: str) -> dict[str, Any]:
    return {
        "orderRef": ref,
        "lines": [{"skuCode": s, "quantity": rnd.randint(1, 3)} for s in rnd.sample(skus, n_lines)],
        "destination": {"latitude": round(rnd.uniform(*LAT), 4), "longitude": round(rnd.uniform(*LON), 4)},
    }


def pure_reference(rnd: random.Random, n_orders: int, n_locations: int, n_skus: int, n_lines: int) -> list[float]:
    """The domain function alone, on inputs shaped like the loaded data: the floor under the API figure."""
    from app.domain.routing import Candidate, GeoPoint, OrderLine, RoutingRequest, route

    skus = [f"R-{i:04d}" for i in range(n_skus)]
    candidates = [
        Candidate(
            location_code=f"L-{i:03d}",
            latitude=rnd.uniform(*LAT),
            longitude=rnd.uniform(*LON),
            priority=rnd.choice([10, 50, 100]),
            available={s: rnd.randint(5, 60) for s in skus if rnd.random() < 0.6},
        )
        for i in range(n_locations)
    ]
    ms = []
    for _ in range(n_orders):
        request = RoutingRequest(
            tuple(OrderLine(s, rnd.randint(1, 3)) for s in rnd.sample(skus, n_lines)),
            GeoPoint(rnd.uniform(*LAT), rnd.uniform(*LON)),
        )
        t = time.perf_counter()
        route(request, candidates)
        ms.append((time.perf_counter() - t) * 1000)
    return ms


async def timed(
    client: RawHttp, query: str, orders: list[dict[str, Any]], key: str
) -> tuple[list[float], list[dict[str, Any]]]:
    ms: list[float] = []
    answers: list[dict[str, Any]] = []
    for order in orders:
        t = time.perf_counter()
        data = await call(client, query, {"input": order})
        ms.append((time.perf_counter() - t) * 1000)
        answers.append(data[key])
    return ms, answers


async def _key_in_process() -> str | None:
    """Without the `stockwire keys` command (yet), the same through app.security, if that exists."""
    try:
        from app.db.engine import Database
        from app.security.keys import create_key
        from app.security.scopes import ALL_SCOPES
    except ImportError:
        return None
    db = Database(sa_url(DB))
    try:
        return (await create_key(db, "bench-routing", ALL_SCOPES)).secret
    finally:
        await db.dispose()


async def run(a: argparse.Namespace) -> None:
    rnd = random.Random(a.seed)
    say(f"re-creating database {DB}")
    await recreate_database(DB)
    server: Server | None = None
    try:
        migrate(DB)
        # every scope the run needs: catalogue and settings, stock events, routing and holding
        key = create_api_key(DB, "admin,integration,router,checkout") or await _key_in_process()
        set_api_key(key)
        say("authenticating with a fresh API key" if key else "no `stockwire keys`: unauthenticated")
        server = start_server(DB)
        await wait_ready(server)
        say(f"server up on port {server.port}")
        client = RawHttp("127.0.0.1", server.port)
        await client.connect()
        try:
            skus = await load(client, rnd, a.locations, a.skus)

            reference = pure_reference(random.Random(a.seed), a.orders, a.locations, a.skus, a.lines)
            say("pure route() measured")

            warm = [random_order(rnd, skus, a.lines, f"warm-{i}") for i in range(30)]
            await timed(client, ROUTE_ORDER_SCORES, warm, "routeOrder")
            dry = [random_order(rnd, skus, a.lines, f"dry-{i}") for i in range(a.orders)]
            route_ms, answers = await timed(client, ROUTE_ORDER, dry, "routeOrder")
            refused_dry = sum(1 for r in answers if r["userErrors"])
            say(f"routeOrder x{a.orders} done")
            scores_ms, _ = await timed(client, ROUTE_ORDER_SCORES, dry, "routeOrder")
            say(f"routeOrder with candidates x{a.orders} done")

            orders = [random_order(rnd, skus, a.lines, f"order-{i}") for i in range(a.orders)]
            reserve_ms, results = await timed(client, ROUTE_AND_RESERVE, orders, "routeAndReserve")
            say(f"routeAndReserve x{a.orders} done")
        finally:
            await client.close()

        won = [r for r in results if r["reservation"] is not None]
        refusals = Counter(e["code"] for r in results for e in r["userErrors"])
        split = Counter(len(r["decision"]["shipments"]) for r in won)
        units = sum(ln["quantity"] for r in won for ln in r["reservation"]["lines"])

        import asyncpg

        conn = await asyncpg.connect(pg_dsn(DB))
        try:
            reserved = await conn.fetchval("SELECT coalesce(sum(reserved), 0) FROM stock_levels")
            stored = await conn.fetchval("SELECT count(*) FROM routing_decisions WHERE reservation_id IS NOT NULL")
            oversold = await conn.fetchval(
                "SELECT count(*) FROM stock_levels WHERE on_hand - committed - reserved - unavailable < 0"
            )
        finally:
            await conn.close()

        print()
        print(f"routing bench: {a.lines}-line orders over {a.locations} locations, {a.skus} SKUs, PostgreSQL, 1 client")
        print(row("route() in process (reference)", reference))
        print(row("routeOrder (shipments, reason)", route_ms, TARGET_P99_MS))
        print(row("routeOrder (+ 200 candidate scores)", scores_ms))
        print(row("routeAndReserve", reserve_ms))
        print(f"routeOrder answers with unserved lines: {refused_dry} of {len(answers)}")
        print(
            f"routeAndReserve: {len(won)} reserved, refusals {dict(refusals) or 'none'}; "
            f"shipments per order {dict(sorted(split.items()))}"
        )
        ok = reserved == units and stored == len(won) and oversold == 0
        print(
            f"sanity: reserved in stock_levels {reserved} == units reserved {units}; stored decisions {stored} == "
            f"{len(won)}; positions below zero {oversold}: {'OK' if ok else 'MISMATCH'}"
        )
    finally:
        if server is not None:
            server.stop()
            server.discard_log()
        if not a.keep_db:
            await drop_database(DB)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=300)
    p.add_argument("--locations", type=int, default=200)
    p.add_argument("--skus", type=int, default=100)
    p.add_argument("--lines", type=int, default=20)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep-db", action="store_true")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
