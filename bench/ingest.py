"""Throughput of `recordInventoryEvents` (batches of 500) against a raw asyncpg baseline doing the same durable work.

    .venv/bin/python bench/ingest.py [--seconds 10] [--integrations 4] [--batch 500]
                                     [--profile sample|cprofile] [--server-cmd CMD] [--unwatched] [--keep-db]
                                     [--workers 2 --broadcast-url redis://127.0.0.1:6379]

On demand only (not part of the test suite). One run:
 1. re-creates a database of its own (`stockwire_bench_ingest_<pid>`), migrates it, loads one location and
    10,000 SKUs (10,000 positions, 1e9 units each, the RECEIVED ledger row behind every one: reserve.py's
    loader) and creates an API key with scope `integration`;
 2. RAW BASELINE: `--integrations` asyncpg connections, as role stockwire_app with the tenant set in each
    transaction (like the service since migration 0011), each sending batches back to back; one batch is
    one transaction of set-based statements: look up SKUs, location and already recorded (source,
    externalId) keys; lock the positions in key order; the on-hand after each count's time (one statement
    for every count of the batch); the domain's own rules (app.domain.events.decide) in Python; one
    UPDATE of every touched position (summed deltas, version + changes), the ledger rows, the outbox rows
    and the demand of reported sales, each one INSERT ... SELECT FROM unnest(...);
 3. SERVICE: `uvicorn app.main:create_app --factory` (STOCKWIRE_BROADCAST_URL=memory://), one worker
    (`--workers N` with `--broadcast-url redis://...`: N workers sharing that Redis on a channel of the run's own);
    `--integrations` keep-alive connections, each sending `recordInventoryEvents` batches back to back;
    a storefront subscribed to one SKU meanwhile (`_common.watch`), so the relay reads every change as
    with any subscriber (on memory:// it builds and publishes only the watched SKU's messages, since
    212fa7f; with `--broadcast-url redis://...` every change's; `--unwatched`: nobody listens, and the
    relay claims the rows unread);
 4. the same generated batches for both (see `Feed`): random positions of the 10,000, a mix of types, 5 %
    re-sent from the same integration's previous batch (answered DUPLICATE, not applied again), 2 % counts,
    and every event stamped 0-120 s in the past, so deltas older than a count at their position arrive
    late (SUPERSEDED: their on-hand part is already in the count);
 5. prints events/s of each, the ratio, the verdict against the targets (>= 10,000 events/s and >= 0.5x the
    baseline), batch latencies, CPU per event (server, Postgres, bench client) and CPU of other processes;
 6. sanity: every position equals the fold of its ledger (each quantity, and the version: versions 1..v
    each held by exactly one changing row), ledger rows per source == distinct events sent, statuses as
    answered, duplicates recorded once.
The server is always killed (finally) and the database dropped unless --keep-db.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    PYTHON,
    ROOT,
    RawHttp,
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
from _common import Result as _Result
from reserve import LOCATION, N_SKUS, SKU_CODES, db_exec, load_catalogue

from app.domain.events import EventType, InventoryEvent

TARGET_RATE = 10_000.0
TARGET_RATIO = 0.5
DUPLICATE_SHARE = 0.05
COUNT_SHARE = 0.02
LATE_WINDOW_S = 120
# the rest of a batch: (type, weight, quantity range)
MIX = [
    ("SOLD", 40, (1, 5)),
    ("RECEIVED", 20, (1, 50)),
    ("ADJUSTED", 10, (-5, 5)),
    ("ORDER_PLACED", 10, (1, 5)),
    ("SHIPPED", 8, (1, 5)),
    ("RETURNED", 4, (1, 3)),
    ("DAMAGED", 4, (1, 3)),
    ("REPAIRED", 4, (1, 3)),
]

RECORD = (
    "mutation Record($input: [InventoryEventInput!]!) { recordInventoryEvents(input: $input) "
    "{ results { index status } userErrors { code message } } }"
)


class Result(_Result):
    def cpu_line(self) -> str:
        return super().cpu_line().replace("CPU per reserve", "CPU per event")


# --- the load --------------------------------------------------------------------------------------------


@dataclass
class Feed:
    """One integration's batches: new events plus re-sends of its previous batch (duplicates)."""

    source: str
    batch: int
    rnd: random.Random = field(default_factory=random.Random)
    n: int = 0
    previous: list[dict[str, Any]] = field(default_factory=list)
    sent_new: int = 0  # distinct events sent (each must be one ledger row)
    sent_dup: int = 0
    last_dups: int = 0

    def _event(self, now: datetime) -> dict[str, Any]:
        self.n += 1
        rnd = self.rnd
        at = now - timedelta(milliseconds=rnd.randrange(LATE_WINDOW_S * 1000))
        sku = SKU_CODES[rnd.randrange(N_SKUS)]
        if rnd.random() < COUNT_SHARE / (1 - DUPLICATE_SHARE):
            kind, qty = "COUNTED", 999_999_000 + rnd.randrange(-100, 100)
        else:
            kind, _, (lo, hi) = rnd.choices(MIX, weights=[w for _, w, _ in MIX])[0]
            qty = rnd.randint(lo, hi) or 1
        return {
            "source": self.source,
            "externalId": f"{self.source}-{self.n}",
            "type": kind,
            "skuCode": sku,
            "locationCode": LOCATION,
            "quantity": qty,
            "occurredAt": at.isoformat().replace("+00:00", "Z"),
        }

    def next_batch(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        dups = int(self.batch * DUPLICATE_SHARE) if self.previous else 0
        out = self.rnd.sample(self.previous, dups) if dups else []
        fresh = [self._event(now) for _ in range(self.batch - dups)]
        out += fresh
        self.rnd.shuffle(out)
        self.previous = fresh
        self.last_dups = dups
        return out

    def sent(self, batch: list[dict[str, Any]]) -> None:
        """The batch was applied: count what it held."""
        self.sent_new += len(batch) - self.last_dups
        self.sent_dup += self.last_dups


def domain_event(e: dict[str, Any]) -> InventoryEvent:
    """An event of a `Feed` batch (GraphQL's input, camelCase) as the domain takes it."""
    return InventoryEvent(
        source=e["source"],
        external_id=e["externalId"],
        type=EventType(e["type"]),
        sku_code=e["skuCode"],
        location_code=e["locationCode"],
        quantity=e["quantity"],
        occurred_at=datetime.fromisoformat(e["occurredAt"]),
    )


# --- the raw baseline ------------------------------------------------------------------------------------

_LEDGER_COLS = (
    "source, external_id, kind, status, sku_id, location_id, quantity, occurred_at, received_at, fingerprint, "
    "d_on_hand, d_committed, d_reserved, d_unavailable, d_safety_stock, d_incoming, drift, version"
)
_LEDGER_TYPES = (
    "varchar[], varchar[], varchar[], varchar[], int[], int[], bigint[], timestamp[], timestamp, varchar[], "
    "bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[]"
)


def _ledger_insert() -> str:
    types = [t.strip() for t in _LEDGER_TYPES.split(",")]
    cols = [c.strip() for c in _LEDGER_COLS.split(",")]
    arrays = [(i, t) for i, t in enumerate(types, start=1) if t.endswith("[]")]
    select = []
    for i, (c, t) in enumerate(zip(cols, types, strict=True), start=1):
        select.append(f"u.{c}" if t.endswith("[]") else f"${i}::{t}")
    unnest = ", ".join(f"${i}::{t}" for i, t in arrays)
    names = ", ".join(cols[i - 1] for i, _ in arrays)
    return (
        f"INSERT INTO inventory_events ({_LEDGER_COLS}) SELECT {', '.join(select)} FROM unnest({unnest}) AS u({names})"
    )


SQL = {
    "skus": "SELECT code, id FROM skus WHERE code = ANY($1::varchar[])",
    "loc": "SELECT code, id, count_authority FROM locations WHERE code = ANY($1::varchar[])",
    "seen": (
        "SELECT e.source, e.external_id, e.fingerprint FROM inventory_events e "
        "JOIN unnest($1::varchar[], $2::varchar[]) AS k(source, external_id) "
        "ON e.source = k.source AND e.external_id = k.external_id"
    ),
    "lock": (
        "SELECT s.sku_id, s.location_id, s.on_hand, s.committed, s.reserved, s.unavailable, s.safety_stock, "
        "s.incoming, s.version, s.counted_at FROM stock_levels s "
        "JOIN unnest($1::int[], $2::int[]) AS k(sku_id, location_id) "
        "ON s.sku_id = k.sku_id AND s.location_id = k.location_id ORDER BY s.sku_id, s.location_id FOR UPDATE OF s"
    ),
    "magnitudes": ("SELECT sku_id, sum(on_hand) FROM stock_levels WHERE sku_id = ANY($1::int[]) GROUP BY sku_id"),
    "since": (
        "SELECT k.i, coalesce(sum(e.d_on_hand), 0)::bigint FROM unnest($1::int[], $2::int[], $3::int[], "
        "$4::timestamp[]) AS k(i, sku_id, location_id, at) LEFT JOIN inventory_events e ON e.sku_id = k.sku_id "
        "AND e.location_id = k.location_id AND e.occurred_at > k.at GROUP BY k.i"
    ),
    "apply": (
        "UPDATE stock_levels s SET on_hand = s.on_hand + u.oh, committed = s.committed + u.c, "
        "unavailable = s.unavailable + u.un, incoming = s.incoming + u.inc, version = s.version + u.n, "
        "counted_at = coalesce(u.counted, s.counted_at), updated_at = $9 "
        "FROM unnest($1::int[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::int[], "
        "$8::timestamp[]) AS u(sku_id, location_id, oh, c, un, inc, n, counted) "
        "WHERE s.sku_id = u.sku_id AND s.location_id = u.location_id"
    ),
    "ledger": _ledger_insert(),
    "outbox": (
        "INSERT INTO outbox (sku_id, location_id, created_at) SELECT s, l, $3 FROM unnest($1::int[], $2::int[]) "
        "AS u(s, l)"
    ),
}


async def baseline_batch(conn: Any, st: dict[str, Any], batch: list[dict[str, Any]]) -> Counter[str]:
    """One batch as one transaction, set-based; returns the statuses (like the service's answer)."""
    from app.domain.events import EventStatus, decide
    from app.domain.quantities import Position
    from app.services.demand.recording import _NOTE_SALES
    from app.services.demand.velocity import half_life_seconds

    now = datetime.now(UTC)
    naive_now = now.replace(tzinfo=None)
    events = [domain_event(e) for e in batch]
    statuses: Counter[str] = Counter()
    async with conn.transaction():
        await conn.execute("SELECT set_config('stockwire.tenant_id', '1', true)")
        skus = {r[0]: r[1] for r in await st["skus"].fetch(list({e.sku_code for e in events}))}
        locs = {r[0]: (r[1], r[2]) for r in await st["loc"].fetch(list({e.location_code for e in events}))}
        seen = {
            (r[0], r[1]): r[2]
            for r in await st["seen"].fetch([e.source for e in events], [e.external_id for e in events])
        }
        todo: list[InventoryEvent] = []
        firsts: set[tuple[str, str]] = set()
        for e in events:
            key = (e.source, e.external_id)
            if key in seen or key in firsts:
                statuses["DUPLICATE"] += 1
                continue
            firsts.add(key)
            todo.append(e)
        pairs = sorted({(skus[e.sku_code], locs[e.location_code][0]) for e in todo})
        rows = await st["lock"].fetch([p[0] for p in pairs], [p[1] for p in pairs])
        pos = {(r[0], r[1]): Position(r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows}
        version = {(r[0], r[1]): r[8] for r in rows}
        counted = {(r[0], r[1]): (r[9].replace(tzinfo=UTC) if r[9] else None) for r in rows}
        await st["magnitudes"].fetch(sorted({p[0] for p in pairs}))
        counts = [(i, e) for i, e in enumerate(todo) if e.type is EventType.COUNTED]
        since: dict[int, int] = {}
        if counts:
            found = await st["since"].fetch(
                [i for i, _ in counts],
                [skus[e.sku_code] for _, e in counts],
                [locs[e.location_code][0] for _, e in counts],
                [e.occurred_at.astimezone(UTC).replace(tzinfo=None) for _, e in counts],
            )
            since = {r[0]: r[1] for r in found}
        applied: dict[tuple[int, int], list[tuple[datetime, int]]] = defaultdict(list)
        acc: dict[tuple[int, int], list[Any]] = {}
        ledger: list[list[Any]] = [[] for _ in range(17)]
        sales: Counter[int] = Counter()
        for i, e in enumerate(todo):
            pair = (skus[e.sku_code], locs[e.location_code][0])
            extra = 0
            if e.type is EventType.COUNTED:
                extra = since.get(i, 0) + sum(u for at, u in applied[pair] if at > e.occurred_at)
            d = decide(e, pos[pair], counted[pair], locs[e.location_code][1], extra)
            delta = d.effect.delta
            if not delta.is_zero or d.counted_at is not None:
                a = acc.setdefault(pair, [0, 0, 0, 0, 0, None])
            if not delta.is_zero:
                version[pair] += 1
                pos[pair] = pos[pair].plus(delta)
                a[0] += delta.on_hand
                a[1] += delta.committed
                a[2] += delta.unavailable
                a[3] += delta.incoming
                a[4] += 1
                if delta.on_hand:
                    applied[pair].append((e.occurred_at, delta.on_hand))
            if d.counted_at is not None:
                counted[pair] = d.counted_at
                a[5] = d.counted_at.astimezone(UTC).replace(tzinfo=None)
            if e.type.value in ("SOLD", "ORDER_PLACED") and e.quantity > 0:
                sales[pair[0]] += e.quantity
            statuses[d.status.value] += 1
            for col, value in zip(
                ledger,
                (
                    e.source,
                    e.external_id,
                    e.type.value,
                    d.status.value,
                    pair[0],
                    pair[1],
                    e.quantity,
                    e.occurred_at.astimezone(UTC).replace(tzinfo=None),
                    e.fingerprint(),
                    delta.on_hand,
                    delta.committed,
                    delta.reserved,
                    delta.unavailable,
                    delta.safety_stock,
                    delta.incoming,
                    d.effect.drift,
                    version[pair],
                ),
                strict=True,
            ):
                col.append(value)
        ps = list(acc)
        await st["apply"].fetch(
            [p[0] for p in ps], [p[1] for p in ps], *([acc[p][k] for p in ps] for k in range(6)), naive_now
        )
        await st["ledger"].fetch(*ledger[:8], naive_now, *ledger[8:])
        changed = [p for p in ps if acc[p][4]]
        await st["outbox"].fetch([p[0] for p in changed], [p[1] for p in changed], naive_now)
        if sales:
            ids = sorted(sales)
            await conn.execute(
                _NOTE_SALES, ids, [""] * len(ids), [float(sales[s]) for s in ids], naive_now, half_life_seconds()
            )
    assert EventStatus.APPLIED.value in statuses or EventStatus.DUPLICATE.value in statuses or not todo
    return statuses


async def run_baseline(
    feeds: list[Feed], seconds: float, statuses: Counter[str], db: str, label: str = "baseline"
) -> Result:
    import asyncpg

    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def connect() -> tuple[Any, dict[str, Any]]:
        conn = await asyncpg.connect(pg_dsn(db))
        await conn.execute("SET ROLE stockwire_app")
        return conn, {name: await conn.prepare(sql) for name, sql in SQL.items()}

    # connected before the CPU snapshot, so their backends are counted as Postgres
    conns = [await connect() for _ in feeds]

    async def worker(feed: Feed, conn: Any, st: dict[str, Any]) -> None:
        while time.perf_counter() < deadline:
            batch = feed.next_batch()
            t = time.perf_counter()
            try:
                got = await baseline_batch(conn, st, batch)
            except asyncpg.DeadlockDetectedError as exc:
                tally.fail(f"deadlock: {exc}")
                feed.previous = []
                continue
            tally.latencies.append(time.perf_counter() - t)
            tally.ok += len(batch)
            statuses.update(got)
            feed.sent(batch)

    try:
        snap = cpu_snapshot([], db)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(f, c, st) for f, (c, st) in zip(feeds, conns, strict=True)))
        elapsed = time.perf_counter() - t0
        # before closing: a backend gone by the second snapshot would not be counted
        cpu = cpu_delta(snap, cpu_snapshot([], db))
    finally:
        for conn, _ in conns:
            await conn.close()
    return Result(label, "ingest", elapsed, tally, cpu)


# --- the service -------------------------------------------------------------------------------------------


def check_response(status: int, data: bytes, n: int) -> tuple[str | None, Counter[str]]:
    if status != 200:
        return f"HTTP {status}: {data[:200]!r}", Counter()
    doc = json.loads(data)
    if doc.get("errors"):
        return f"errors: {str(doc['errors'])[:300]}", Counter()
    payload = (doc.get("data") or {}).get("recordInventoryEvents") or {}
    if payload.get("userErrors"):
        return f"userErrors: {str(payload['userErrors'])[:300]}", Counter()
    results = payload.get("results") or []
    if len(results) != n:
        return f"{len(results)} results for {n} events", Counter()
    return None, Counter(r["status"] for r in results)


async def run_service(
    server: Server, feeds: list[Feed], seconds: float, statuses: Counter[str], db: str, label: str, profiled: bool
) -> Result:
    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def worker(feed: Feed) -> None:
        client = RawHttp("127.0.0.1", server.port)
        await client.connect()
        try:
            while time.perf_counter() < deadline:
                batch = feed.next_batch()
                body = json.dumps({"query": RECORD, "variables": {"input": batch}}).encode()
                t = time.perf_counter()
                try:
                    status, data = await client.request("POST", "/graphql", body)
                except Exception as exc:  # a broken connection: count it, reconnect
                    tally.fail(f"{type(exc).__name__}: {exc}")
                    tally.unknown += 1
                    await client.close()
                    client = RawHttp("127.0.0.1", server.port)
                    await client.connect()
                    feed.previous = []
                    continue
                tally.latencies.append(time.perf_counter() - t)
                why, got = check_response(status, data, len(batch))
                if why is None:
                    tally.ok += len(batch)
                    statuses.update(got)
                    feed.sent(batch)
                else:
                    tally.fail(why)
                    feed.previous = []
        finally:
            await client.close()

    server_pids = server.pids()
    snap = cpu_snapshot(server_pids, db)
    if profiled:
        os.kill(server.proc.pid, signal.SIGUSR1)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(f) for f in feeds))
    elapsed = time.perf_counter() - t0
    cpu = cpu_delta(snap, cpu_snapshot(server_pids, db))
    if profiled:
        os.kill(server.proc.pid, signal.SIGUSR2)
    return Result(label, "ingest", elapsed, tally, cpu)


# --- checks and reporting ----------------------------------------------------------------------------------

_NONZERO = (
    "(d_on_hand <> 0 OR d_committed <> 0 OR d_reserved <> 0 OR d_unavailable <> 0 OR d_safety_stock <> 0 "
    "OR d_incoming <> 0)"
)


async def sanity(db: str, groups: dict[str, tuple[str, list[Feed], Counter[str]]], unknown: int) -> bool:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(db))
    try:
        fold_bad = await conn.fetchval(
            "SELECT count(*) FROM stock_levels sl LEFT JOIN ("
            "  SELECT sku_id, location_id, sum(d_on_hand) AS oh, sum(d_committed) AS c, sum(d_reserved) AS r,"
            "  sum(d_unavailable) AS un, sum(d_safety_stock) AS ss, sum(d_incoming) AS inc,"
            f"  count(*) FILTER (WHERE {_NONZERO}) AS changes,"
            f"  count(DISTINCT version) FILTER (WHERE {_NONZERO}) AS versions,"
            f"  max(version) FILTER (WHERE {_NONZERO}) AS top"
            "  FROM inventory_events GROUP BY sku_id, location_id) f"
            " ON f.sku_id = sl.sku_id AND f.location_id = sl.location_id"
            " WHERE f.sku_id IS NULL OR f.oh <> sl.on_hand OR f.c <> sl.committed OR f.r <> sl.reserved"
            " OR f.un <> sl.unavailable OR f.ss <> sl.safety_stock OR f.inc <> sl.incoming"
            " OR f.changes <> sl.version OR f.versions <> sl.version OR f.top <> sl.version"
        )
        per_source = {
            r[0]: (r[1], r[2])
            for r in await conn.fetch(
                "SELECT source, count(*), count(DISTINCT external_id) FROM inventory_events "
                "WHERE source LIKE 'svc-%' OR source LIKE 'raw-%' GROUP BY source"
            )
        }
        by_status = {
            (r[0], r[1]): r[2]
            for r in await conn.fetch(
                "SELECT left(source, 3), status, count(*) FROM inventory_events "
                "WHERE source LIKE 'svc-%' OR source LIKE 'raw-%' GROUP BY 1, 2"
            )
        }
    finally:
        await conn.close()
    ok = fold_bad == 0
    print(f"sanity: positions differing from the fold of their ledger (quantities or gapless versions): {fold_bad}")
    for name, (prefix, feeds, statuses) in groups.items():
        rows = sum(per_source.get(f.source, (0, 0))[0] for f in feeds)
        distinct = sum(per_source.get(f.source, (0, 0))[1] for f in feeds)
        sent_new = sum(f.sent_new for f in feeds)
        sent_dup = sum(f.sent_dup for f in feeds)
        stored = {s: n for (p, s), n in by_status.items() if p == prefix}
        answered = dict(statuses)
        dup_ok = answered.get("DUPLICATE", 0) == sent_dup and rows == distinct
        match = rows == sent_new and dup_ok and all(stored.get(s, 0) == answered.get(s, 0) for s in stored)
        ok = ok and match
        print(
            f"  {name:8}: events sent {sent_new + sent_dup:,} ({sent_dup:,} re-sent = "
            f"{100 * sent_dup / max(1, sent_new + sent_dup):.1f} %); ledger rows {rows:,} (distinct keys "
            f"{distinct:,}) vs distinct events {sent_new:,}; answered {answered}; stored {stored} -> "
            f"{'OK' if match else 'MISMATCH'}"
        )
    if unknown:
        print(f"  ({unknown} calls failed with an unknown outcome; they may account for a difference)")
    print(f"sanity: {'OK' if ok else 'MISMATCH'}")
    return ok


def print_table(baseline: Result, service: Result, batch: int) -> None:
    print()
    ratio = service.rate / baseline.rate if baseline.rate else float("nan")
    verdict = "PASS" if service.rate >= TARGET_RATE and ratio >= TARGET_RATIO else "FAIL"
    hdr = f"{'':10} {'events/s':>9} {'batches':>8} {'batch p50 ms':>12} {'batch p99 ms':>12} {'failures':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in (baseline, service):
        print(
            f"{r.label:10} {r.rate:9.0f} {len(r.tally.latencies):8d} {r.pct(0.5):12.1f} {r.pct(0.99):12.1f} "
            f"{r.tally.failed:8d}"
        )
    print(
        f"service/baseline {ratio:.2f} (target >= {TARGET_RATIO}), service {service.rate:.0f} events/s "
        f"(target >= {TARGET_RATE:.0f}) -> {verdict}  [batches of {batch}]"
    )
    print()
    for r in (baseline, service):
        line = r.cpu_line()
        if line:
            print(f"  {r.label:10} {line}")
    for r in (baseline, service):
        for s in r.tally.failure_samples:
            print(f"  failure ({r.label}): {s}")
    print()


# --- main ---------------------------------------------------------------------------------------------------


async def amain(a: argparse.Namespace) -> int:
    stop_on_sigterm()
    server: Server | None = None
    watcher: Watcher | None = None
    unknown = 0
    say(
        f"ingest benchmark: {a.integrations} integrations, batches of {a.batch}, {a.seconds:g}s per phase "
        f"(+ {a.warmup:g}s warm-up); {DUPLICATE_SHARE:.0%} re-sent, {COUNT_SHARE:.0%} counts, events up to "
        f"{LATE_WINDOW_S}s late"
    )
    try:
        say(f"re-creating database {a.db}")
        await recreate_database(a.db)
        say("migrating (stockwire migrate)")
        await asyncio.to_thread(migrate, a.db)
        say(f"loading 1 location and {N_SKUS:,} SKUs (one position each, direct SQL)")
        await load_catalogue(a.db)
        key = await asyncio.to_thread(create_api_key, a.db, "integration")
        set_api_key(key)
        say("API key created (scope integration)" if key else "no API keys: requests go unauthenticated")
        watch_key = await asyncio.to_thread(create_api_key, a.db, "storefront") if key else None

        run = uuid.uuid4().hex[:6]
        raw_feeds = [Feed(f"raw-{run}-{k}", a.batch) for k in range(a.integrations)]
        svc_feeds = [Feed(f"svc-{run}-{k}", a.batch) for k in range(a.integrations)]
        raw_status: Counter[str] = Counter()
        svc_status: Counter[str] = Counter()

        await db_exec(a.db, "VACUUM ANALYZE")
        say(f"baseline: warm-up {a.warmup:g}s")
        await run_baseline(raw_feeds, a.warmup, raw_status, a.db)
        say(f"baseline: measuring {a.seconds:g}s with {a.integrations} asyncpg connections")
        base = await run_baseline(raw_feeds, a.seconds, raw_status, a.db)
        say(f"baseline: {base.rate:.0f} events/s, batch p50 {base.pct(0.5):.1f} ms, failures {base.tally.failed}")
        n = await db_exec(a.db, "WITH d AS (DELETE FROM outbox RETURNING 1) SELECT count(*) FROM d")
        say(f"removed {n:,} outbox rows left by the baseline (it runs no relay)")
        await db_exec(a.db, "VACUUM ANALYZE")

        label = "service" + (f" +{a.profile}" if a.profile else "")
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
            workers = f"{a.workers} worker" + ("s" if a.workers > 1 else "")
            say(f"starting uvicorn app.main:create_app --factory ({workers}, broadcast {a.broadcast_url})")
            broadcast = {"STOCKWIRE_BROADCAST_URL": a.broadcast_url}
            if a.broadcast_url.startswith("redis"):  # a channel of its own: other users of that Redis hear nothing
                broadcast["STOCKWIRE_BROADCAST_CHANNEL"] = f"stockwire.bench.ingest.{uuid.uuid4().hex[:12]}"
            server = start_server(a.db, workers=a.workers, extra_env=broadcast)
        await wait_ready(server)
        say(f"service up on port {server.port} (pids {server.pids()})")
        watcher = await storefront(server.port, watch_key, SKU_CODES[0], a.unwatched)
        say(f"service: warm-up {a.warmup:g}s")
        w = await run_service(server, svc_feeds, a.warmup, svc_status, a.db, label, False)
        if w.tally.failed and not w.tally.ok:
            raise SystemExit(
                "every call failed during the warm-up; for example:\n  " + "\n  ".join(w.tally.failure_samples)
            )
        say(f"service: measuring {a.seconds:g}s with {a.integrations} clients")
        svc = await run_service(server, svc_feeds, a.seconds, svc_status, a.db, label, bool(a.profile))
        unknown += w.tally.unknown + svc.tally.unknown
        backlog = await db_exec(a.db, "SELECT count(*) FROM outbox")
        say(
            f"service: {svc.rate:.0f} events/s, batch p50 {svc.pct(0.5):.1f} ms, p99 {svc.pct(0.99):.1f} ms, "
            f"failures {svc.tally.failed}; outbox backlog now {backlog:,}"
        )
        if watcher is not None:
            watcher.report()
            watcher = None
        say("stopping the server")
        server.stop()
        server.discard_log()
        server = None

        print_table(base, svc, a.batch)
        ok = await sanity(
            a.db, {"baseline": ("raw", raw_feeds, raw_status), "service": ("svc", svc_feeds, svc_status)}, unknown
        )
        if a.profile:
            print_profile(a.profile, a.profile_out, [label])
        return 0 if ok else 1
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
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement (default 2)")
    p.add_argument("--integrations", type=int, default=4, help="concurrent integrations (default 4)")
    p.add_argument("--batch", type=int, default=500, help="events per call (default 500)")
    p.add_argument("--db", default=run_database("ingest"), help="database to (re-)create (default: one per run)")
    p.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    p.add_argument("--profile", choices=("sample", "cprofile"), help="run the service in-process under a profiler")
    p.add_argument(
        "--unwatched", action="store_true", help="no storefront subscribed (the relay then claims changes unread)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers (default 1; more need --broadcast-url redis://)"
    )
    p.add_argument(
        "--broadcast-url",
        default="memory://",
        help="the service's STOCKWIRE_BROADCAST_URL (default memory://, one process only: a storefront "
        "subscribed to one worker hears only that worker's changes)",
    )
    p.add_argument("--server-cmd", help="measure this server command instead of uvicorn; `{port}` is replaced")
    p.add_argument("--profile-out", default="/tmp/stockwire-ingest-profile", help="profile file prefix")
    a = p.parse_args()
    if a.workers > 1 and not a.broadcast_url.startswith("redis"):
        p.error("--workers above 1 needs --broadcast-url redis://...: with memory:// each worker has its own hub")
    run_bench(amain(a))


if __name__ == "__main__":
    main()
