"""Throughput of the `reserve` mutation against a raw asyncpg baseline doing the same durable work.

    .venv/bin/python bench/reserve.py [--seconds 10] [--clients 16] [--workers 1,2] [--client raw|httpx]
                                      [--profile sample|cprofile] [--server-cmd CMD] [--keep-db]

On demand only (not part of the test suite). One run:
 1. re-creates a database of its own (`stockwire_bench_reserve_<pid>`), migrates it (`stockwire migrate`),
    loads one location and 10,000 SKUs, each with 1e9 units on hand (a RECEIVED ledger row per SKU, so
    the integrity check holds);
 2. RAW BASELINE: `--clients` asyncpg connections as the service's role (`stockwire_app`, row-level
    security), each call one transaction scoped to the tenant in its BEGIN, with the durable work the
    service must do, one prepared statement per step: the idempotency claim (insert reservation ON
    CONFLICT DO NOTHING), SKU and location in one select, the due expired holds of the SKU (locked),
    insert line, insert outbox row, conditional hold UPDATE ... RETURNING version, insert ledger row,
    the sales-velocity upsert, whether any channel has a dynamic buffer; then COMMIT (11 round trips);
    scenarios HOT (one SKU) and SPREAD (random SKU of 10,000);
 3. SERVICE: `uvicorn app.main:create_app --factory` on a free port (STOCKWIRE_BROADCAST_URL=memory://),
    for each `--workers` value; `--clients` keep-alive connections sending the GraphQL `reserve` mutation
    (1 line, quantity 1, explicit locationCode, unique idempotencyKey); same two scenarios; a storefront
    subscribed to one SKU the load rarely touches (`_common.watch`), so the relay reads and publishes every
    change as with any subscriber (`--unwatched`: nobody listens and it claims the rows unread; with
    several workers on memory:// only the worker holding the subscription has one);
 4. prints the table (service/s, baseline/s, ratio vs the targets of issue 15: spread >= 0.8x, hot >= 1.0x, p50/p99),
    CPU spent per reserve by the server, Postgres and the load generator, and a sanity check: the units
    reserved in stock_levels equal the successful calls, SKU by SKU.
The server is always killed (finally). With the defaults the whole run takes about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shlex
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_HEADERS,
    PYTHON,
    ROOT,
    RawHttp,
    Result,
    Server,
    Tally,
    Watcher,
    cpu_delta,
    cpu_snapshot,
    create_api_key,
    drop_database,
    migrate,
    pg_dsn,
    print_profile,
    recreate_database,
    run_bench,
    run_database,
    say,
    set_api_key,
    start_server,
    stop_on_sigterm,
    storefront,
    wait_ready,
)

N_SKUS = 10_000
LOCATION = "BENCH-WH"
HOT_SKU = "BENCH-00000"
ON_HAND = 1_000_000_000
SKU_CODES = [f"BENCH-{i:05d}" for i in range(N_SKUS)]
TARGETS = {"HOT": 1.0, "SPREAD": 0.8}  # issue 15
DEFAULT_TTL = 900  # the service's default ttlSeconds

RESERVE = (
    "mutation Reserve($input: ReserveInput!) { reserve(input: $input) "
    "{ reservation { id } userErrors { code message } } }"
)


def picker(scenario: str) -> Callable[[], str]:
    if scenario == "HOT":
        return lambda: HOT_SKU
    rnd = random.Random()
    return lambda: SKU_CODES[rnd.randrange(N_SKUS)]


# --- set-up ----------------------------------------------------------------------------------------------

_ZERO = {"integer": "0", "bigint": "0", "smallint": "0", "numeric": "0", "double precision": "0", "boolean": "false"}


async def complete_insert(conn: Any, sql: str) -> str:
    """Add the table's NOT NULL columns that have no default and the statement does not name (0 or false).

    The schema grows while this benchmark stays put (e.g. reservation_lines.backordered, set by the app
    in Python): the raw inserts keep working, with the zero value the service itself writes.
    """
    m = re.match(r"INSERT INTO (\w+) \(([^)]*)\)", sql)
    assert m, sql
    table, named = m.group(1), {c.strip() for c in m.group(2).split(",")}
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = $1 AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' "
        "ORDER BY ordinal_position",
        table,
    )
    extra = [(r["column_name"], r["data_type"]) for r in rows if r["column_name"] not in named]
    if not extra:
        return sql
    for col, typ in extra:
        if typ not in _ZERO:
            raise SystemExit(f"{table}.{col} ({typ}) is NOT NULL without a default: teach bench/reserve.py about it")
    cols = "".join(f", {c}" for c, _ in extra)
    vals = "".join(f", {_ZERO[t]}" for _, t in extra)
    sql = sql[: m.end(2)] + cols + sql[m.end(2) :]
    if sql.rstrip().endswith(")") and " VALUES (" in sql:
        body = sql.rstrip()
        return body[:-1] + vals + ")"
    i = sql.rindex(" FROM ")  # INSERT ... SELECT ... FROM
    return sql[:i] + vals + sql[i:]


async def load_catalogue(db: str) -> None:
    """One location, 10,000 SKUs, a position each with ON_HAND units and the RECEIVED row behind it."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(db))
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        async with conn.transaction():
            loc_id = await conn.fetchval(
                await complete_insert(
                    conn,
                    "INSERT INTO locations (code, name, kind, priority, active, created_at, updated_at) "
                    "VALUES ($1, 'Bench warehouse', 'WAREHOUSE', 100, true, $2, $2)",
                )
                + " RETURNING id",
                LOCATION,
                now,
            )
            await conn.execute("INSERT INTO counters (name, value) VALUES ('locations', 1)")
            await conn.execute(
                await complete_insert(
                    conn,
                    "INSERT INTO skus (code, name, active, version, created_at, updated_at) "
                    "SELECT 'BENCH-' || lpad(g::text, 5, '0'), 'Bench SKU ' || g, true, 1, $1, $1 "
                    "FROM generate_series(0, $2 - 1) AS g",
                ),
                now,
                N_SKUS,
            )
            await conn.execute(
                await complete_insert(
                    conn,
                    "INSERT INTO stock_levels (sku_id, location_id, on_hand, committed, reserved, unavailable, "
                    "safety_stock, incoming, version, updated_at) "
                    "SELECT id, $1, $2, 0, 0, 0, 0, 0, 1, $3 FROM skus",
                ),
                loc_id,
                ON_HAND,
                now,
            )
            await conn.execute(
                await complete_insert(
                    conn,
                    "INSERT INTO inventory_events (source, external_id, kind, status, sku_id, location_id, "
                    "quantity, occurred_at, received_at, d_on_hand, d_committed, d_reserved, d_unavailable, "
                    "d_safety_stock, d_incoming, drift, version) "
                    "SELECT 'bench', 'seed-' || code, 'RECEIVED', 'APPLIED', id, $1, $2, $3, $3, $2, 0, 0, 0, 0, "
                    "0, 0, 1 FROM skus",
                ),
                loc_id,
                ON_HAND,
                now,
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def db_exec(db: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(db))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# --- the raw baseline ------------------------------------------------------------------------------------

# The durable work of one reserve (1 line, named location) as a hand-written asyncpg service would do it
# against the same schema, with the same rules as the service (issue 15): connections log in like the
# service's and switch to the application's role (`stockwire_app`, so row-level security applies), each
# transaction is scoped to the tenant in its BEGIN's own round trip (app/db/engine.py `_ScopedConnection`
# does the same), and every statement below is prepared once per connection. One statement per step,
# in the service's order, no read-back (the service answers from what it wrote).
TENANT = 1
APP_ROLE = "stockwire_app"
BEGIN = f"BEGIN; SELECT set_config('stockwire.tenant_id', '{TENANT}', true);"
SQL = {
    # the idempotency claim: the reservation row unless the key is taken (then no row)
    "claim": (
        "INSERT INTO reservations (id, status, idempotency_scope, idempotency_key, fingerprint, channel_code, "
        "cart_ref, created_at, updated_at, expires_at) VALUES ($1, 'ACTIVE', $2, $3, $4, NULL, NULL, $5, $5, $6) "
        "ON CONFLICT (tenant_id, idempotency_scope, idempotency_key) DO NOTHING RETURNING id"
    ),
    # the SKU and the location of the request in one statement
    "resolve": (
        "SELECT 'S' AS kind, id, active FROM skus WHERE code = $1 "
        "UNION ALL SELECT 'L', id, active FROM locations WHERE code = $2"
    ),
    # expired holds on this SKU are given back before a new hold (a promise of the service): the due ones,
    # locked (none are due in this benchmark, so this finds nothing)
    "due": (
        "SELECT r.id FROM reservations r WHERE r.status = 'ACTIVE' AND r.expires_at <= $1 "
        "AND r.id IN (SELECT reservation_id FROM reservation_lines WHERE sku_id = $2) "
        "ORDER BY r.expires_at LIMIT 500 FOR UPDATE"
    ),
    "ins_line": "INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity) VALUES ($1, $2, $3, $4)",
    "ins_outbox": "INSERT INTO outbox (sku_id, location_id, created_at) VALUES ($1, $2, $3)",
    # the conditional hold: the row changes only while the units are available
    "hold": (
        "UPDATE stock_levels SET reserved = reserved + $3, version = version + 1, updated_at = $4 "
        "WHERE sku_id = $1 AND location_id = $2 "
        "AND on_hand - committed - reserved - unavailable - safety_stock >= $3 RETURNING version"
    ),
    "ins_ledger": (
        "INSERT INTO inventory_events (source, external_id, kind, status, sku_id, location_id, quantity, "
        "occurred_at, received_at, reason, reference, to_location_id, expected_at, reservation_id, fingerprint, "
        "d_on_hand, d_committed, d_reserved, d_unavailable, d_safety_stock, d_incoming, drift, version) "
        "VALUES ('stockwire', NULL, 'RESERVED', 'APPLIED', $1, $2, $3, $4, $4, NULL, NULL, NULL, NULL, $5, NULL, "
        "0, 0, $3, 0, 0, 0, 0, $6)"
    ),
    # the sales velocity (issue 18): the SKU's decayed count plus this sale, one upsert
    "demand": (
        "INSERT INTO sku_demand AS d (sku_id, channel_code, units, last_at) VALUES ($1, '', $2, $3) "
        "ON CONFLICT (tenant_id, sku_id, channel_code) DO UPDATE SET "
        "units = d.units * power(2.0, -greatest(0.0, extract(epoch FROM excluded.last_at - d.last_at)) / $4::float8) "
        "+ excluded.units, last_at = greatest(d.last_at, excluded.last_at)"
    ),
    # dynamic buffers move with demand (issue 18): only when a channel has one (none here)
    "dynamic": "SELECT EXISTS (SELECT 1 FROM channels WHERE dynamic_buffer_factor IS NOT NULL)",
}
HALF_LIFE = 3600.0  # the service's default STOCKWIRE_VELOCITY_HALF_LIFE_SECONDS


async def baseline_call(conn: Any, st: dict[str, Any], sku_code: str, key: str) -> str:
    now = datetime.now(UTC).replace(tzinfo=None)
    parts = [f"{sku_code}\x1f{LOCATION}\x1f1", "channel\x1f\x1fcart\x1f"]
    fingerprint = hashlib.sha256("\x1e".join(parts).encode()).hexdigest()
    rid = str(uuid.uuid4())
    await conn.execute(BEGIN)
    try:
        if await st["claim"].fetchval(rid, "", key, fingerprint, now, now + timedelta(seconds=DEFAULT_TTL)) is None:
            raise RuntimeError("idempotency key reused")
        found = {r["kind"]: r for r in await st["resolve"].fetch(sku_code, LOCATION)}
        sku, loc = found.get("S"), found.get("L")
        if sku is None or loc is None or not sku["active"] or not loc["active"]:
            raise RuntimeError("unknown sku/location")
        if await st["due"].fetch(now, sku["id"]):
            raise RuntimeError("expired holds due: the bench creates none")
        await st["ins_line"].fetch(rid, sku["id"], loc["id"], 1)
        await st["ins_outbox"].fetch(sku["id"], loc["id"], now)
        version = await st["hold"].fetchval(sku["id"], loc["id"], 1, now)
        if version is None:
            raise RuntimeError("INSUFFICIENT_STOCK")
        await st["ins_ledger"].fetch(sku["id"], loc["id"], 1, now, rid, version)
        await st["demand"].fetch(sku["id"], 1.0, now, HALF_LIFE)
        if await st["dynamic"].fetchval():
            raise RuntimeError("a dynamic buffer: the bench creates none")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return rid


async def run_baseline(
    pool: Any,
    scenario: str,
    seconds: float,
    clients: int,
    expected: Counter[str],
    label: str = "baseline",
    db: str | None = None,
) -> Result:
    tally = Tally()
    pick = picker(scenario)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        async with pool.acquire() as conn:
            # as the service's connections: the login switches to the application's role for the session
            # (again on every acquire: the pool's reset on release undoes it)
            await conn.execute(f"SELECT set_config('role', '{APP_ROLE}', false)")
            st = {}
            for name, sql in SQL.items():
                st[name] = await conn.prepare(await complete_insert(conn, sql) if name.startswith("ins_") else sql)
            prefix = uuid.uuid4().hex
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                sku = pick()
                t = time.perf_counter()
                try:
                    await baseline_call(conn, st, sku, f"{prefix}-{i}")
                except Exception as exc:
                    tally.fail(f"{type(exc).__name__}: {exc}")
                    continue
                tally.latencies.append(time.perf_counter() - t)
                tally.ok += 1
                expected[sku] += 1

    snap = cpu_snapshot([], db)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_delta(snap, cpu_snapshot([], db))
    return Result(label, scenario, elapsed, tally, cpu)


# --- the service ---------------------------------------------------------------------------------------


def reserve_body(sku: str, key: str) -> bytes:
    variables = {"input": {"lines": [{"skuCode": sku, "quantity": 1, "locationCode": LOCATION}], "idempotencyKey": key}}
    return json.dumps({"query": RESERVE, "variables": variables}).encode()


def check_response(status: int, data: bytes) -> str | None:
    """None when the call reserved; otherwise why not."""
    if status != 200:
        return f"HTTP {status}: {data[:200]!r}"
    doc = json.loads(data)
    if doc.get("errors"):
        return f"errors: {doc['errors']}"
    payload = (doc.get("data") or {}).get("reserve") or {}
    if payload.get("userErrors"):
        return f"userErrors: {payload['userErrors']}"
    if not (payload.get("reservation") or {}).get("id"):
        return f"no reservation: {doc}"
    return None


async def run_service(
    server: Server,
    scenario: str,
    seconds: float,
    clients: int,
    expected: Counter[str],
    label: str,
    client_kind: str,
    profiled: bool = False,
    db: str | None = None,
) -> Result:
    tally = Tally()
    pick = picker(scenario)
    deadline = time.perf_counter() + seconds

    async def raw_worker() -> None:
        client = RawHttp("127.0.0.1", server.port)
        await client.connect()
        prefix = uuid.uuid4().hex
        i = 0
        try:
            while time.perf_counter() < deadline:
                i += 1
                sku = pick()
                body = reserve_body(sku, f"{prefix}-{i}")
                t = time.perf_counter()
                try:
                    status, data = await client.request("POST", "/graphql", body)
                except Exception as exc:  # a broken connection: count it, reconnect
                    tally.fail(f"{type(exc).__name__}: {exc}")
                    tally.unknown += 1
                    await client.close()
                    client = RawHttp("127.0.0.1", server.port)
                    await client.connect()
                    continue
                tally.latencies.append(time.perf_counter() - t)
                why = check_response(status, data)
                if why is None:
                    tally.ok += 1
                    expected[sku] += 1
                else:
                    tally.fail(why)
        finally:
            await client.close()

    async def httpx_worker(http: Any) -> None:
        prefix = uuid.uuid4().hex
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            sku = pick()
            body = reserve_body(sku, f"{prefix}-{i}")
            t = time.perf_counter()
            try:
                resp = await http.post("/graphql", content=body, headers={"content-type": "application/json"})
            except Exception as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
                tally.unknown += 1
                continue
            tally.latencies.append(time.perf_counter() - t)
            why = check_response(resp.status_code, resp.content)
            if why is None:
                tally.ok += 1
                expected[sku] += 1
            else:
                tally.fail(why)

    server_pids = server.pids()
    snap = cpu_snapshot(server_pids, db)
    if profiled:
        os.kill(server.proc.pid, signal.SIGUSR1)  # _profiled_server.py: start measuring
    t0 = time.perf_counter()
    if client_kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        base_url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30, headers=DEFAULT_HEADERS) as http:
            await asyncio.gather(*(httpx_worker(http) for _ in range(clients)))
    else:
        await asyncio.gather(*(raw_worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_delta(snap, cpu_snapshot(server_pids, db))
    if profiled:
        os.kill(server.proc.pid, signal.SIGUSR2)  # stop measuring, write the report
    return Result(label, scenario, elapsed, tally, cpu)


# --- checks and reporting ----------------------------------------------------------------------------------


async def sanity(db: str, expected: Counter[str], unknown: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(db))
    try:
        rows = await conn.fetch("SELECT s.code, sl.reserved FROM stock_levels sl JOIN skus s ON s.id = sl.sku_id")
        n_res = await conn.fetchval("SELECT count(*) FROM reservations")
        ledger_bad = await conn.fetchval(
            "SELECT count(*) FROM stock_levels sl JOIN ("
            "  SELECT sku_id, location_id, sum(d_reserved) AS r, sum(d_on_hand) AS oh, max(version) AS v"
            "  FROM inventory_events GROUP BY sku_id, location_id) f"
            " ON f.sku_id = sl.sku_id AND f.location_id = sl.location_id"
            " WHERE f.r <> sl.reserved OR f.oh <> sl.on_hand OR f.v <> sl.version"
        )
    finally:
        await conn.close()
    stored = {r["code"]: int(r["reserved"]) for r in rows}
    total_stored = sum(stored.values())
    total_expected = sum(expected.values())
    bad = [c for c in SKU_CODES if stored.get(c, 0) != expected.get(c, 0)]
    verdict = "OK" if not bad and total_stored == total_expected == n_res else "MISMATCH"
    print(
        f"sanity: reserved units in stock_levels = {total_stored:,}; successful calls (service + baseline, "
        f"warm-ups included) = {total_expected:,}; reservations rows = {n_res:,}; "
        f"hot SKU {stored.get(HOT_SKU, 0):,} vs {expected.get(HOT_SKU, 0):,}; "
        f"SKUs differing: {len(bad)}; positions disagreeing with their ledger: {ledger_bad} -> {verdict}"
    )
    if bad:
        sample = ", ".join(f"{c} stored {stored.get(c, 0)} expected {expected[c]}" for c in bad[:5])
        print(f"  first differing SKUs: {sample}")
    if unknown:
        print(f"  ({unknown} calls failed with an unknown outcome; they may account for a difference)")


def print_table(baseline: dict[str, Result], service: list[Result]) -> None:
    print()
    hdr = (
        f"{'scenario':8} {'server':12} {'service/s':>10} {'baseline/s':>11} {'ratio':>6} {'target':>7} "
        f"{'verdict':>7}  {'svc p50 ms':>10} {'svc p99 ms':>10}  {'base p50/p99 ms':>16}  {'failures':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in service:
        b = baseline[r.scenario]
        ratio = r.rate / b.rate if b.rate else float("nan")
        target = TARGETS[r.scenario]
        verdict = "PASS" if ratio >= target else "FAIL"
        print(
            f"{r.scenario:8} {r.label:12} {r.rate:10.0f} {b.rate:11.0f} {ratio:6.2f} {'>=' + str(target):>7} "
            f"{verdict:>7}  {r.pct(0.5):10.1f} {r.pct(0.99):10.1f}  "
            f"{b.pct(0.5):7.1f}/{b.pct(0.99):<8.1f}  {r.tally.failed + b.tally.failed:8d}"
        )
    print()
    for r in [*baseline.values(), *service]:
        line = r.cpu_line()
        if line:
            print(f"  {r.scenario:6} {r.label:12} {line}")
    for r in [*baseline.values(), *service]:
        for s in r.tally.failure_samples:
            print(f"  failure ({r.label} {r.scenario}): {s}")
    print()


# --- main ---------------------------------------------------------------------------------------------------


async def amain(a: argparse.Namespace) -> int:
    import asyncpg

    stop_on_sigterm()
    expected: Counter[str] = Counter()
    unknown = 0
    server: Server | None = None
    watcher: Watcher | None = None
    worker_counts = [int(w) for w in a.workers.split(",") if w.strip()]
    if a.profile or a.server_cmd:
        worker_counts = [1]
    n_phases = 2 * (1 + len(worker_counts))
    say(
        f"reserve benchmark: {a.clients} clients, {a.seconds:g}s per scenario (+ warm-up), "
        f"server workers {worker_counts}, client {a.client}; about {n_phases * (a.seconds + a.warmup) + 15:.0f}s"
    )
    try:
        say(f"re-creating database {a.db}")
        await recreate_database(a.db)
        say("migrating (stockwire migrate)")
        await asyncio.to_thread(migrate, a.db)
        say(f"loading 1 location and {N_SKUS:,} SKUs with {ON_HAND:,} units each (direct SQL)")
        await load_catalogue(a.db)
        watch_key = None
        if not a.no_auth:
            key = await asyncio.to_thread(create_api_key, a.db, "checkout")
            set_api_key(key)
            watch_key = await asyncio.to_thread(create_api_key, a.db, "storefront") if key else None
            say(
                "API key created (scope checkout): requests authenticate; hold rate limit off for the server"
                if key
                else "this service has no API keys: requests go unauthenticated"
            )

        # --- raw baseline
        baseline: dict[str, Result] = {}
        pool = await asyncpg.create_pool(pg_dsn(a.db), min_size=a.clients, max_size=a.clients)
        try:
            for scenario in ("HOT", "SPREAD"):
                await db_exec(a.db, "VACUUM stock_levels")
                say(f"baseline {scenario}: warm-up {a.warmup:g}s")
                await run_baseline(pool, scenario, a.warmup, a.clients, expected, db=a.db)
                say(f"baseline {scenario}: measuring {a.seconds:g}s with {a.clients} asyncpg connections")
                r = await run_baseline(pool, scenario, a.seconds, a.clients, expected, db=a.db)
                baseline[scenario] = r
                say(f"baseline {scenario}: {r.rate:.0f} reserves/s, p50 {r.pct(0.5):.1f} ms, failures {r.tally.failed}")
        finally:
            await pool.close()
        # The baseline wrote outbox rows but has no relay; left there, the service's relay would publish
        # them during its own measurement. Relaying its own rows is part of the service's cost; these are not.
        n = await db_exec(a.db, "WITH d AS (DELETE FROM outbox RETURNING 1) SELECT count(*) FROM d")
        say(f"removed {n:,} outbox rows left by the baseline (it runs no relay)")

        # --- the service
        service: list[Result] = []
        for workers in worker_counts:
            label = f"{workers} worker" + ("s" if workers > 1 else "") + (f" +{a.profile}" if a.profile else "")
            if a.server_cmd:
                label = "custom cmd"
            await db_exec(a.db, "VACUUM stock_levels")
            if a.profile:
                for old in Path(a.profile_out).parent.glob(Path(a.profile_out).name + ".*"):
                    old.unlink()
                script = str(ROOT / "bench" / "_profiled_server.py")
                argv = [PYTHON, script, "--port", "{port}", "--out", a.profile_out, "--mode", a.profile]
                say(f"starting the service in-process with the {a.profile} profiler (-> {a.profile_out}.N)")
                server = start_server(a.db, argv=argv)
            elif a.server_cmd:
                say(f"starting the custom server command: {a.server_cmd}")
                server = start_server(a.db, argv=shlex.split(a.server_cmd))
            else:
                say(f"starting uvicorn app.main:create_app --factory --workers {workers}")
                server = start_server(a.db, workers=workers)
            await wait_ready(server, workers)
            say(f"service up on port {server.port} (pids {server.pids()})")
            watcher = await storefront(server.port, watch_key, SKU_CODES[-1], a.unwatched)
            for scenario in ("HOT", "SPREAD"):
                say(f"service {scenario} ({label}): warm-up {a.warmup:g}s")
                w = await run_service(server, scenario, a.warmup, a.clients, expected, label, a.client, db=a.db)
                if w.tally.failed and not w.tally.ok:
                    samples = "\n  ".join(w.tally.failure_samples)
                    raise SystemExit(f"every call failed during the warm-up; for example:\n  {samples}")
                say(f"service {scenario} ({label}): measuring {a.seconds:g}s with {a.clients} clients")
                r = await run_service(
                    server, scenario, a.seconds, a.clients, expected, label, a.client, profiled=bool(a.profile), db=a.db
                )
                unknown += w.tally.unknown + r.tally.unknown
                service.append(r)
                backlog = await db_exec(a.db, "SELECT count(*) FROM outbox")
                say(
                    f"service {scenario} ({label}): {r.rate:.0f} reserves/s, p50 {r.pct(0.5):.1f} ms, "
                    f"p99 {r.pct(0.99):.1f} ms, failures {r.tally.failed}; outbox backlog now {backlog:,}"
                )
            if watcher is not None:
                watcher.report()
                watcher = None
            say("stopping the server")
            server.stop()
            server.discard_log()
            server = None

        print_table(baseline, service)
        await sanity(a.db, expected, unknown)
        if a.profile:
            print_profile(a.profile, a.profile_out, [f"{r.scenario} {r.label}" for r in service])
        return 0
    finally:
        if watcher is not None:
            watcher.discard()
        if server is not None:
            say(f"stopping the server (its log: {server.log_path})")
            server.stop()
        if not a.keep_db:
            try:
                await drop_database(a.db)
            except Exception as exc:  # pragma: no cover - best effort
                say(f"could not drop {a.db}: {exc}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement (default 2)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients / connections (default 16)")
    p.add_argument("--workers", default="1,2", help="uvicorn worker counts to measure, comma-separated (default 1,2)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw", help="HTTP load generator (default raw)")
    p.add_argument("--db", default=run_database("reserve"), help="database to (re-)create (default: one per run)")
    p.add_argument("--no-auth", action="store_true", help="do not create an API key (when keys exist)")
    p.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    p.add_argument(
        "--unwatched", action="store_true", help="no storefront subscribed (the relay then claims changes unread)"
    )
    p.add_argument(
        "--profile",
        choices=("sample", "cprofile"),
        help="run the service in-process (1 worker) under a stack sampler or cProfile; prints the report",
    )
    p.add_argument(
        "--server-cmd",
        help="measure this server command instead of uvicorn (A/B of a change); `{port}` is replaced, "
        "STOCKWIRE_DATABASE_URL and STOCKWIRE_BROADCAST_URL are set",
    )
    p.add_argument("--profile-out", default="/tmp/stockwire-reserve-profile", help="profile file prefix")
    run_bench(amain(p.parse_args()))


if __name__ == "__main__":
    main()
