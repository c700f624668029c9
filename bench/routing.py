"""Latency of order routing: a 20-line order over 200 locations on PostgreSQL.

    .venv/bin/python bench/routing.py [--orders 300] [--locations 200] [--skus 100] [--lines 20] [--keep-db]

On demand only (not part of the test suite). One run:
 1. re-creates a database of its own (`stockwire_bench_routing_<pid>`), migrates it (`stockwire migrate`) and starts
    `uvicorn app.main:create_app --factory` on a free port (STOCKWIRE_BROADCAST_URL=memory://);
 2. loads, through the API, `--locations` locations scattered over the continental US (priorities and
    shipping costs vary) and `--skus` SKUs; each location stocks ~60 % of the SKUs (RECEIVED events);
 3. in-process reference: the pure `app.domain.routing.route` alone on the same shape of input;
 4. routeOrder (the dry run), `--orders` calls one after another over one keep-alive connection, each
    a random order of `--lines` distinct SKUs (1-3 units) to a random US destination; once asking for
    the shipments and the reason, once also for all 200 candidates' scores;
 5. routeAndReserve, `--orders` calls the same way (unique orderRef each), all holding stock; once
    back to back, once paced (`--pace` ms between calls): each reservation makes the server publish
    the changed stock levels and availabilities after its commit (the outbox relay, in the same event
    loop), and back to back the next call waits behind that work; paced shows the call's own latency.
    A storefront stays subscribed to one SKU throughout (`_common.watch`): with nobody subscribed on
    memory:// the relay would claim the changes unread and this work would not be measured
    (`--unwatched` measures that);
 6. the server is stopped, then the **raw-SQL baseline** runs the same orders over one asyncpg
    connection with prepared statements doing the same database work: for routeOrder the SKU lookup,
    the candidate read (the service's own statement) and the pure `route()`; for routeAndReserve in
    one transaction also the reservation row, the row locks and the conditional hold UPDATE, the
    lines, ledger and outbox rows, the daily order count and the stored decision (JSON of the same
    shape). No HTTP, no GraphQL, no SQLAlchemy, no publishing: the floor under the service's figure;
 7. prints p50/p90/p99/max per operation with the service/baseline ratio of the p50s, against the
    target (routeOrder p99 <= 20 ms), how many shipments the orders split into, and a sanity check:
    the units reserved in stock_levels equal the units of the successful reservations (service and
    baseline), and the stored decisions equal the successful calls.
The server is always killed (finally). With the defaults the whole run takes about 2-3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    PYTHON,
    ROOT,
    RawHttp,
    Server,
    Watcher,
    create_api_key,
    drop_database,
    graphql,
    migrate,
    pg_dsn,
    print_profile,
    recreate_database,
    run_bench,
    run_database,
    sa_url,
    say,
    set_api_key,
    start_server,
    stop_on_sigterm,
    storefront,
    wait_ready,
)

DB = run_database("routing")
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


def row(label: str, ms: list[float], target: float | None = None, baseline: list[float] | None = None) -> str:
    p99 = pct(ms, 0.99)
    ratio = "" if baseline is None else f"  {pct(ms, 0.5) / pct(baseline, 0.5):5.1f}x baseline p50"
    verdict = "" if target is None else ("  target p99 <= 20 ms: " + ("MET" if p99 <= target else "MISSED"))
    return (
        f"{label:<38} n={len(ms):4d}  p50 {pct(ms, 0.5):7.2f} ms  p90 {pct(ms, 0.9):7.2f} ms  "
        f"p99 {p99:7.2f} ms  max {max(ms):7.2f} ms{ratio}{verdict}"
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


# the profiled server's pid while `--profile` is on: `timed` brackets each measured phase with
# SIGUSR1/SIGUSR2 (bench/_profiled_server.py), one report per phase
PROFILED: list[int] = []
PHASES: list[str] = []


async def timed(
    client: RawHttp, query: str, orders: list[dict[str, Any]], key: str, label: str, pace_ms: float = 0
) -> tuple[list[float], list[dict[str, Any]]]:
    ms: list[float] = []
    answers: list[dict[str, Any]] = []
    if PROFILED and label != "warm-up":
        PHASES.append(label)
        os.kill(PROFILED[0], signal.SIGUSR1)
    for i, order in enumerate(orders, start=1):
        t = time.perf_counter()
        data = await call(client, query, {"input": order})
        ms.append((time.perf_counter() - t) * 1000)
        answers.append(data[key])
        if pace_ms:
            await asyncio.sleep(pace_ms / 1000)
        if i % 100 == 0 and i < len(orders):
            say(f"{label}: {i}/{len(orders)}")
    if PROFILED and label != "warm-up":
        os.kill(PROFILED[0], signal.SIGUSR2)
    return ms, answers


# --- the raw-SQL baseline -------------------------------------------------------------------------

_AVAILABLE = (
    "stock_levels.on_hand - stock_levels.committed - stock_levels.reserved - stock_levels.unavailable "
    "- stock_levels.safety_stock"
)
BASELINE_SQL = {
    "skus": "SELECT id, code, active FROM skus WHERE code = ANY($1::text[])",
    # the service's candidate read (app/db/routing.py, _CANDIDATES), positional parameters
    "candidates": (
        "SELECT l.id, l.code, l.active, l.priority, l.latitude, l.longitude, lr.shipping_cost, "
        "lr.daily_order_capacity, ldo.orders, h.sku_ids, h.units "
        "FROM locations l "
        "LEFT JOIN location_routing lr ON lr.location_id = l.id "
        "LEFT JOIN location_daily_orders ldo ON ldo.location_id = l.id AND ldo.day = $2 "
        "LEFT JOIN (SELECT stock_levels.location_id, array_agg(stock_levels.sku_id) AS sku_ids, "
        f"array_agg({_AVAILABLE}) AS units FROM stock_levels "
        f"WHERE stock_levels.sku_id = ANY($1::integer[]) AND {_AVAILABLE} > 0 "
        "GROUP BY stock_levels.location_id) h ON h.location_id = l.id"
    ),
    "by_key": "SELECT id FROM reservations WHERE idempotency_scope = $1 AND idempotency_key = $2",
    "ins_res": (
        "INSERT INTO reservations (id, status, idempotency_scope, idempotency_key, fingerprint, channel_code, "
        "cart_ref, order_ref, created_at, updated_at, expires_at) "
        "VALUES ($1, 'ACTIVE', '', $2, $3, NULL, NULL, $4, $5, $5, $6)"
    ),
    "lock": (
        "SELECT stock_levels.sku_id FROM stock_levels "
        "JOIN unnest($1::integer[], $2::integer[]) AS v(sku_id, location_id) "
        "ON stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
        "ORDER BY stock_levels.sku_id, stock_levels.location_id FOR UPDATE OF stock_levels"
    ),
    "hold": (
        "UPDATE stock_levels SET reserved = stock_levels.reserved + v.q, version = stock_levels.version + 1, "
        "updated_at = $4 FROM unnest($1::integer[], $2::integer[], $3::bigint[]) AS v(sku_id, location_id, q) "
        "WHERE stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
        f"AND {_AVAILABLE} >= v.q RETURNING stock_levels.sku_id, stock_levels.location_id, stock_levels.version"
    ),
    "day": (
        "INSERT INTO location_daily_orders (location_id, day, orders) SELECT unnest($1::integer[]), $2, 1 "
        "ON CONFLICT (tenant_id, location_id, day) DO UPDATE SET orders = location_daily_orders.orders + 1"
    ),
    "lines": (
        "INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity, backordered) "
        "SELECT $1, unnest($2::integer[]), unnest($3::integer[]), unnest($4::bigint[]), 0"
    ),
    "ledger": (
        "INSERT INTO inventory_events (source, external_id, kind, status, sku_id, location_id, quantity, "
        "occurred_at, received_at, reference, reservation_id, d_on_hand, d_committed, d_reserved, d_unavailable, "
        "d_safety_stock, d_incoming, drift, version) "
        "SELECT 'stockwire', NULL, 'RESERVED', 'APPLIED', s, l, q, $5, $5, $6, $1, 0, 0, q, 0, 0, 0, 0, v "
        "FROM unnest($2::integer[], $3::integer[], $4::bigint[], $7::bigint[]) AS t(s, l, q, v)"
    ),
    "outbox": (
        "INSERT INTO outbox (sku_id, location_id, created_at) SELECT unnest($1::integer[]), unnest($2::integer[]), $3"
    ),
    "decision": (
        "INSERT INTO routing_decisions (order_ref, channel_code, reservation_id, request, decision, created_at) "
        "VALUES ($1, NULL, $2, $3, $4, $5) RETURNING id"
    ),
    "read_back": (
        "SELECT s.code, l.code, rl.quantity FROM reservation_lines rl JOIN skus s ON s.id = rl.sku_id "
        "JOIN locations l ON l.id = rl.location_id WHERE rl.reservation_id = $1 ORDER BY s.code, l.code"
    ),
}


async def baseline_route(conn: Any, st: dict[str, Any], order: dict[str, Any], day: str) -> tuple[Any, Any, Any]:
    """The read and the pure routing, as the service does them, without HTTP/GraphQL/SQLAlchemy."""
    from app.domain.routing import Candidate, GeoPoint, OrderLine, RoutingRequest, route

    sku_rows = await st["skus"].fetch([ln["skuCode"] for ln in order["lines"]])
    code_of = {r["id"]: r["code"] for r in sku_rows}
    candidates = []
    loc_ids = {}
    for loc_id, code, active, priority, lat, lon, cost, capacity, orders, sku_ids, units in await st[
        "candidates"
    ].fetch(list(code_of), day):
        loc_ids[code] = loc_id
        held = {} if sku_ids is None else {code_of[i]: int(q) for i, q in zip(sku_ids, units, strict=True)}
        candidates.append(Candidate(code, active, True, priority, lat, lon, cost, capacity, orders or 0, held))
    destination = order["destination"]
    request = RoutingRequest(
        tuple(OrderLine(ln["skuCode"], ln["quantity"]) for ln in order["lines"]),
        GeoPoint(destination["latitude"], destination["longitude"]),
    )
    decision = route(request, candidates)
    return decision, {r["code"]: r["id"] for r in sku_rows}, (loc_ids, candidates)


async def baseline_route_and_reserve(conn: Any, st: dict[str, Any], order: dict[str, Any]) -> int:
    """Returns the units held (0: refused)."""
    import json
    import uuid
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(tzinfo=None)
    day = now.date().isoformat()
    async with conn.transaction():
        if await st["by_key"].fetchrow("", order["orderRef"]) is not None:
            raise RuntimeError("idempotency key reused")
        rid = str(uuid.uuid4())
        await st["ins_res"].fetch(rid, order["orderRef"], "f" * 64, order["orderRef"], now, now + timedelta(minutes=15))
        decision, sku_ids, (loc_ids, candidates) = await baseline_route(conn, st, order, day)
        if decision.unserved:
            raise _Refused
        plan = sorted(
            ((sku_ids[ln.sku_code], loc_ids[s.location_code]), ln.quantity)
            for s in decision.shipments
            for ln in s.lines
        )
        skus_, locs, qs = [p[0] for p, _ in plan], [p[1] for p, _ in plan], [q for _, q in plan]
        await st["lock"].fetch(skus_, locs)
        versions = {(r[0], r[1]): r[2] for r in await st["hold"].fetch(skus_, locs, qs, now)}
        if len(versions) != len(plan):
            raise _Refused
        await st["day"].fetch(sorted({loc_ids[s.location_code] for s in decision.shipments}), day)
        await st["lines"].fetch(rid, skus_, locs, qs)
        await st["ledger"].fetch(rid, skus_, locs, qs, now, order["orderRef"], [versions[p] for p, _ in plan])
        await st["outbox"].fetch(skus_, locs, now)
        request = {"order": order, "candidates": [[c.location_code, c.priority, dict(c.available)] for c in candidates]}
        record = {
            "shipments": [[s.location_code, [list(ln) for ln in s.lines]] for s in decision.shipments],
            "candidates": [list(c) for c in decision.candidates],
            "reason": decision.reason,
        }
        await st["decision"].fetchval(
            order["orderRef"], rid, json.dumps(request, default=str), json.dumps(record, default=str), now
        )
        if not await st["read_back"].fetch(rid):
            raise RuntimeError("read-back failed")
    return sum(qs)


class _Refused(Exception):
    pass


async def run_baseline(
    db: str, dry: list[dict[str, Any]], orders: list[dict[str, Any]]
) -> tuple[list[float], list[float], int, int]:
    """routeOrder and routeAndReserve, raw; returns their latencies, the units held and the refusals."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(db))
    try:
        st = {name: await conn.prepare(sql) for name, sql in BASELINE_SQL.items()}
        day = time.strftime("%Y-%m-%d", time.gmtime())
        for order in dry[:30]:  # warm-up, as for the service
            await baseline_route(conn, st, order, day)
        route_ms = []
        for order in dry:
            t = time.perf_counter()
            async with conn.transaction(readonly=True):
                await baseline_route(conn, st, order, day)
            route_ms.append((time.perf_counter() - t) * 1000)
        say(f"baseline routeOrder x{len(dry)} done")
        reserve_ms, units, refused = [], 0, 0
        for order in orders:
            t = time.perf_counter()
            try:
                units += await baseline_route_and_reserve(conn, st, order)
            except _Refused:
                refused += 1
            reserve_ms.append((time.perf_counter() - t) * 1000)
        await conn.execute("DELETE FROM outbox")  # no relay runs: the service's relay work is its own cost
        say(f"baseline routeAndReserve x{len(orders)} done")
        return route_ms, reserve_ms, units, refused
    finally:
        await conn.close()


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
    stop_on_sigterm()
    rnd = random.Random(a.seed)
    say(f"re-creating database {DB}")
    await recreate_database(DB)
    server: Server | None = None
    watcher: Watcher | None = None
    try:
        migrate(DB)
        # every scope the run needs: catalogue and settings, stock events, routing and holding
        key = create_api_key(DB, "admin,integration,router,checkout") or await _key_in_process()
        set_api_key(key)
        say("authenticating with a fresh API key" if key else "no `stockwire keys`: unauthenticated")
        watch_key = create_api_key(DB, "storefront") if key else None
        argv = None
        if a.profile:
            for old in Path(a.profile_out).parent.glob(Path(a.profile_out).name + ".*"):
                old.unlink()
            script = str(ROOT / "bench" / "_profiled_server.py")
            argv = [PYTHON, script, "--port", "{port}", "--out", a.profile_out, "--mode", a.profile]
        server = start_server(DB, argv=argv)
        await wait_ready(server)
        if a.profile:
            PROFILED[:] = [server.proc.pid]
        say(f"server up on port {server.port}")
        client = RawHttp("127.0.0.1", server.port)
        await client.connect()
        try:
            skus = await load(client, rnd, a.locations, a.skus)
            watcher = await storefront(server.port, watch_key, skus[0], a.unwatched)

            reference = pure_reference(random.Random(a.seed), a.orders, a.locations, a.skus, a.lines)
            say("pure route() measured")

            warm = [random_order(rnd, skus, a.lines, f"warm-{i}") for i in range(30)]
            await timed(client, ROUTE_ORDER_SCORES, warm, "routeOrder", "warm-up")
            dry = [random_order(rnd, skus, a.lines, f"dry-{i}") for i in range(a.orders)]
            route_ms, answers = await timed(client, ROUTE_ORDER, dry, "routeOrder", "routeOrder")
            refused_dry = sum(1 for r in answers if r["userErrors"])
            say(f"routeOrder x{a.orders} done")
            scores_ms, _ = await timed(client, ROUTE_ORDER_SCORES, dry, "routeOrder", "routeOrder with candidates")
            say(f"routeOrder with candidates x{a.orders} done")

            orders = [random_order(rnd, skus, a.lines, f"order-{i}") for i in range(a.orders)]
            reserve_ms, results = await timed(client, ROUTE_AND_RESERVE, orders, "routeAndReserve", "routeAndReserve")
            say(f"routeAndReserve x{a.orders} done")
            paced = [random_order(rnd, skus, a.lines, f"paced-{i}") for i in range(a.orders)]
            paced_ms, paced_results = await timed(
                client, ROUTE_AND_RESERVE, paced, "routeAndReserve", "routeAndReserve paced", a.pace
            )
            say(f"routeAndReserve paced ({a.pace:.0f} ms apart) x{a.orders} done")
            results += paced_results
        finally:
            await client.close()
            if watcher is not None:
                watcher.report()
                watcher = None
        server.stop()
        server.discard_log()
        server = None
        if a.profile:
            print_profile(a.profile, a.profile_out, PHASES)
        say("server stopped; raw-SQL baseline on the same database")
        raw_orders = [random_order(rnd, skus, a.lines, f"raw-{i}") for i in range(a.orders)]
        base_route_ms, base_reserve_ms, base_units, base_refused = await run_baseline(DB, dry, raw_orders)

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
        print(row("baseline routeOrder (raw SQL + route())", base_route_ms))
        print(row("routeOrder (shipments, reason)", route_ms, TARGET_P99_MS, base_route_ms))
        print(row(f"routeOrder (+ {a.locations} candidate scores)", scores_ms, None, base_route_ms))
        print(row("baseline routeAndReserve (raw SQL)", base_reserve_ms))
        print(row("routeAndReserve back to back", reserve_ms, None, base_reserve_ms))
        print(row(f"routeAndReserve paced ({a.pace:.0f} ms apart)", paced_ms, None, base_reserve_ms))
        print(f"routeOrder answers with unserved lines: {refused_dry} of {len(answers)}")
        print(
            f"routeAndReserve: {len(won)} reserved, refusals {dict(refusals) or 'none'}; "
            f"shipments per order {dict(sorted(split.items()))}; baseline refused {base_refused}"
        )
        ok = reserved == units + base_units and stored == len(won) + len(raw_orders) - base_refused and oversold == 0
        print(
            f"sanity: reserved in stock_levels {reserved} == units reserved {units} + baseline {base_units}; "
            f"stored decisions {stored} == {len(won)} + baseline {len(raw_orders) - base_refused}; "
            f"positions below zero {oversold}: {'OK' if ok else 'MISMATCH'}"
        )
    finally:
        if watcher is not None:
            watcher.discard()
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
    p.add_argument("--pace", type=float, default=300.0, help="ms between paced routeAndReserve calls")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--unwatched", action="store_true", help="no storefront subscribed (changes are claimed unread)")
    p.add_argument(
        "--profile",
        choices=("sample", "cprofile"),
        help="run the service in-process (bench/_profiled_server.py) and print its profile per measured phase",
    )
    p.add_argument("--profile-out", default="/tmp/stockwire-routing-profile", help="profile file prefix")
    run_bench(run(p.parse_args()), fast_loop=False)


if __name__ == "__main__":
    main()
