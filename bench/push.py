"""Push latency, fan-out and memory per idle subscriber, across two server processes through Redis.

    .venv/bin/python bench/push.py [--seconds 15] [--rate 200] [--skus 200] [--per-sku 5]
                                   [--warmup 3] [--fanout 1000] [--idle 10000] [--skip-memory] [--keep-db]
                                   [--profile sample|cprofile]

On demand only (not part of the test suite). One run:
 1. re-creates a database of its own (`stockwire_bench_push_<pid>`), migrates it, creates an API key;
    starts two servers, A and B (`uvicorn app.main:create_app --factory`), on that database and the Redis at
    127.0.0.1:6379 with a channel of their own (STOCKWIRE_BROADCAST_CHANNEL=stockwire.bench.push.<random>),
    and loads `--skus` SKUs at one location through B's GraphQL API;
 2. RAW BASELINE: Redis PUBLISH -> pub/sub receipt, at `--rate` messages/s (redis-py, no server involved);
 3. MEMORY: RSS of server A, then `--idle` websocket connections to A each holding one subscription
    (availabilityChanged of one SKU) and idle; RSS again; (delta / subscribers) is the memory per idle
    subscriber;
 4. LATENCY: after `--warmup` seconds of the same load (not measured), `--skus` x `--per-sku`
    subscriptions on A, multiplexed 100 per graphql-transport-ws connection; `--rate` changes/s
    through B (a RECEIVED 1 event each; SKUs round-robin, so each SKU changes once a second), open loop,
    for `--seconds`. Each receipt is matched to its change by (SKU, available);
    prints p50 / p99 / max of commit -> receipt (three clocks, below), and checks that every subscriber
    saw strictly increasing versions and ends at the true state;
 5. FAN-OUT: `--fanout` subscriptions of one SKU on A (100 per connection); one change through B, five
    times: the time until the first and the last subscriber has it.
The servers are killed and the database dropped in `finally`. With `--profile`, A and B run under
bench/_profiled_server.py and the report of each for the latency phase is printed at the end.

When did the change commit? The writer cannot see the commit itself, so latencies are given three ways:
"after the response" (receipt - the writer got B's response: commit is before it; a lower bound),
"from updatedAt" (receipt - the position's updatedAt, stamped by B inside the transaction before the
commit: an upper bound), and "from the send" (receipt - the writer sent the mutation: adds B's whole
request handling). One machine, one clock (time.time()).

The subscribers use a minimal websocket client in this process (asyncio.Protocol, no task per
connection; frames are timestamped on arrival and parsed afterwards), so 5,000 connections cost the
load generator little and measuring does not eat the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    RawHttp,
    Server,
    cpu_delta,
    cpu_snapshot,
    create_api_key,
    drop_database,
    graphql,
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
    wait_ready,
)

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCATION = "PUSH-WH"
PER_CONNECTION = 100  # the service's default max_subscriptions_per_connection
SUBSCRIPTION = (
    "subscription($s: [String!]) { availabilityChanged(skuCodes: $s) "
    "{ skuCode available version locations { updatedAt } } }"
)
RECORD = (
    "mutation($input: [InventoryEventInput!]!) { recordInventoryEvents(input: $input) "
    "{ results { status } userErrors { code message } } }"
)
AVAILABILITY = "query($s: [String!]!) { availability(skuCodes: $s) { skuCode available version } }"


def sku_code(i: int) -> str:
    return f"PUSH-{i:04d}"


# --- a minimal graphql-transport-ws client ----------------------------------------------------------


class WsConnection(asyncio.Protocol):
    """One websocket (client side), graphql-transport-ws, many subscriptions on it.

    Frames sent are masked with a zero key (valid per RFC 6455; the server unmasks either way), so
    sending costs one header; frames received are kept raw with their arrival time and parsed later.
    """

    def __init__(self, host: str, port: int, key: str | None, sink: Receipts) -> None:
        self.host, self.port, self.key, self.sink = host, port, key, sink
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    # asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        nonce = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /graphql HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before connection_ack: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
            del self.buf[: end + 4]
            if b" 101 " not in status:
                self.ready.set_exception(ConnectionError(f"upgrade refused: {status!r}"))
                return
            self.upgraded = True
            init: dict[str, Any] = {"type": "connection_init", "payload": {}}
            if self.key:
                init["payload"]["authorization"] = f"Bearer {self.key}"
            self.send(init)
        buf = self.buf
        while len(buf) >= 2:
            opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + length:
                return
            payload = bytes(buf[at : at + length])
            del buf[: at + length]
            if opcode == 1:
                self._on_text(payload, now)
            elif opcode == 9:
                self._frame(0x8A, payload)  # websocket-level ping -> pong
            elif opcode == 8:
                self.closed = True

    # graphql-transport-ws ------------------------------------------------------------------------
    def _on_text(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"type":"next"') or b'"next"' in payload[:64]:
            self.sink.raw.append((now, payload))
            return
        message = json.loads(payload)
        kind = message.get("type")
        if kind == "connection_ack":
            self.ready.set_result(None)
        elif kind == "ping":
            self.send({"type": "pong"})
        elif kind in ("error", "complete"):
            self.sink.errors.append(payload.decode()[:300])

    def subscribe(self, op_id: str, skus: list[str]) -> None:
        self.send({"id": op_id, "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"s": skus}}})

    def send(self, message: dict[str, Any]) -> None:
        self._frame(0x81, json.dumps(message, separators=(",", ":")).encode())

    def _frame(self, first: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((first, 0x80 | n))
        elif n < 65536:
            head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Receipts:
    """Everything the subscribers received: (arrival time, raw frame), parsed after the phase."""

    raw: list[tuple[float, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def parsed(self) -> list[tuple[float, str, dict[str, Any]]]:
        """(arrival, operation id, availabilityChanged payload) for every `next` message."""
        out = []
        for at, raw in self.raw:
            m = json.loads(raw)
            out.append((at, m["id"], m["payload"]["data"]["availabilityChanged"]))
        return out


async def open_connections(port: int, key: str | None, count: int, sink: Receipts) -> list[WsConnection]:
    loop = asyncio.get_running_loop()
    conns: list[WsConnection] = []
    for start in range(0, count, 200):  # a few hundred handshakes at a time: no SYN backlog overflow
        batch = [WsConnection("127.0.0.1", port, key, sink) for _ in range(start, min(count, start + 200))]
        await asyncio.gather(*(loop.create_connection(lambda c=c: c, "127.0.0.1", port) for c in batch))
        await asyncio.gather(*(c.ready for c in batch))
        conns += batch
    return conns


async def wait_for_messages(sink: Receipts, count: int, what: str, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    last = -1
    while len(sink.raw) < count:
        if sink.errors:
            raise RuntimeError(f"{len(sink.errors)} subscription errors waiting for {what}: {sink.errors[:3]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(sink.raw)} of {count} messages for {what} after {within}s")
        if len(sink.raw) // 1000 != last // 1000:
            last = len(sink.raw)
        await asyncio.sleep(0.05)


def close_all(conns: list[WsConnection]) -> None:
    for c in conns:
        c.close()


# --- measurements -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def raw_redis_baseline(rate: float, seconds: float) -> list[float]:
    """PUBLISH -> receipt on a pub/sub connection, at `rate` per second: the floor under any push."""
    from redis.asyncio import Redis

    channel = f"stockwire.bench.raw.{uuid.uuid4().hex}"
    publisher, listener = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)
    while (await pubsub.get_message(timeout=1.0)) is None:  # the subscribe confirmation
        pass
    latencies: list[float] = []

    async def listen() -> None:
        while True:
            m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if m is not None:
                latencies.append(time.time() - float(m["data"]))

    task = asyncio.create_task(listen())
    try:
        t0, n = time.monotonic(), int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            await publisher.publish(channel, repr(time.time()))
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await publisher.aclose()
        await listener.aclose()
    return latencies


@dataclass
class Change:
    sku: str
    sent: float
    answered: float = 0.0
    ok: bool = False


class Writer:
    """Open-loop changes through server B: RECEIVED 1 on a SKU, over a pool of keep-alive connections."""

    def __init__(self, port: int, connections: int = 16) -> None:
        self.port = port
        self.size = connections
        self.pool: asyncio.Queue[RawHttp] = asyncio.Queue()
        self.changes: list[Change] = []
        self.late = 0  # changes that had to wait for a free connection

    async def __aenter__(self) -> Writer:
        for _ in range(self.size):
            c = RawHttp("127.0.0.1", self.port)
            await c.connect()
            self.pool.put_nowait(c)
        return self

    async def __aexit__(self, *_: object) -> None:
        while not self.pool.empty():
            await self.pool.get_nowait().close()

    async def change(self, sku: str) -> Change:
        if self.pool.empty():
            self.late += 1
        conn = await self.pool.get()
        record = Change(sku, time.time())
        self.changes.append(record)
        try:
            event = {
                "source": "bench-push",
                "externalId": uuid.uuid4().hex,
                "type": "RECEIVED",
                "skuCode": sku,
                "locationCode": LOCATION,
                "quantity": 1,
                "occurredAt": datetime.now(UTC).isoformat(),
            }
            out = await graphql(conn, RECORD, {"input": [event]})
            record.answered = time.time()
            data = out.get("data") or {}
            result = data.get("recordInventoryEvents") or {}
            record.ok = not out.get("errors") and not result.get("userErrors")
            if not record.ok:
                say(f"  change refused: {json.dumps(out)[:300]}")
        finally:
            self.pool.put_nowait(conn)
        return record

    async def run(self, skus: list[str], rate: float, seconds: float) -> None:
        tasks: set[asyncio.Task[Change]] = set()
        t0, n = time.monotonic(), int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            task = asyncio.create_task(self.change(skus[i % len(skus)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if i and i % int(rate * 5) == 0:
                say(f"  {i} changes sent")
        await asyncio.gather(*tasks)


class Clocks:
    """Both sides' clocks while the latency phase runs, to tell where a stall is.

    * the bench's own event loop: a 5 ms timer, recording how late it fires (a late bench stamps its
      receipts late and sends its changes late);
    * each server's event loop: GET /healthz every 50 ms on a keep-alive connection (no database, no
      Redis), recording its round trip: a server busy or blocked for 300 ms answers 300 ms late.
    """

    TICK = 0.005
    PROBE = 0.05

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.bench_lag: list[tuple[float, float]] = []  # (time, lateness)
        self.probes: dict[str, list[tuple[float, float]]] = {name: [] for name in ports}  # (sent, round trip)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._tick()))
        for name, port in self.ports.items():
            conn = RawHttp("127.0.0.1", port)
            await conn.connect()
            self._tasks.append(asyncio.create_task(self._probe(name, conn)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.TICK
            await asyncio.sleep(self.TICK)
            self.bench_lag.append((time.time(), loop.time() - due))

    async def _probe(self, name: str, conn: RawHttp) -> None:
        try:
            while True:
                sent = time.time()
                await conn.request("GET", "/healthz")
                self.probes[name].append((sent, time.time() - sent))
                await asyncio.sleep(max(0.0, sent + self.PROBE - time.time()))
        finally:
            await conn.close()

    def worst(self, series: list[tuple[float, float]], start: float, end: float) -> float:
        return max((v for t, v in series if start <= t <= end), default=0.0)

    def summary(self) -> str:
        lags = [v for _, v in self.bench_lag]
        parts = [f"bench loop late p99 {ms(pct(lags, 0.99)).strip()} max {ms(max(lags, default=0)).strip()} ms"]
        for name, series in self.probes.items():
            rtts = [v for _, v in series]
            parts.append(
                f"server {name} /healthz p50 {ms(pct(rtts, 0.5)).strip()} p99 {ms(pct(rtts, 0.99)).strip()} "
                f"max {ms(max(rtts, default=0)).strip()} ms"
            )
        return "; ".join(parts)


def stall_windows(
    timeline: list[tuple[float, float, float | None]], clocks: Clocks, origin: float, over: float = 0.05
) -> list[str]:
    """Receipts later than `over` from updatedAt, grouped into windows (by updatedAt), each with where the
    time went: updatedAt -> heard on Redis (server B: commit, relay, publish), Redis -> receipt (server A,
    the websocket, the bench), and both clocks in the window."""
    late = sorted((t for t in timeline if t[1] - t[0] > over), key=lambda t: t[0])
    windows: list[list[tuple[float, float, float | None]]] = []
    for item in late:
        if windows and item[0] - windows[-1][-1][0] < 0.2:
            windows[-1].append(item)
        else:
            windows.append([item])
    lines = []
    for w in windows:
        start, end = w[0][0], max(t[1] for t in w)
        b_side = [t[2] - t[0] for t in w if t[2] is not None]
        a_side = [t[1] - t[2] for t in w if t[2] is not None]
        lines.append(
            f"  t={start - origin:6.2f}s {len(w):4d} late receipts, "
            f"worst {ms(max(t[1] - t[0] for t in w)).strip()} ms; "
            f"updatedAt->Redis max {ms(max(b_side, default=float('nan'))).strip()}, "
            f"Redis->receipt max {ms(max(a_side, default=float('nan'))).strip()}; "
            f"bench loop late max {ms(clocks.worst(clocks.bench_lag, start, end)).strip()}, "
            + ", ".join(
                f"{name} /healthz max {ms(clocks.worst(series, start - 0.1, end)).strip()}"
                for name, series in clocks.probes.items()
            )
            + " (ms)"
        )
    return lines


async def truth(port: int, skus: list[str]) -> dict[str, dict[str, Any]]:
    c = RawHttp("127.0.0.1", port)
    await c.connect()
    try:
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(skus), 100):
            data = await graphql(c, AVAILABILITY, {"s": skus[start : start + 100]})
            if data.get("errors"):
                raise RuntimeError(f"availability query failed: {data['errors']}")
            out.update({r["skuCode"]: r for r in data["data"]["availability"]})
        return out
    finally:
        await c.close()


async def load_catalogue(port: int, skus: list[str]) -> None:
    c = RawHttp("127.0.0.1", port)
    await c.connect()
    try:
        mutations = [
            (
                "mutation($i: [LocationInput!]!) { upsertLocations(input: $i) { userErrors { code message } } }",
                {"i": [{"code": LOCATION, "name": LOCATION, "kind": "WAREHOUSE"}]},
            ),
            (
                "mutation($i: [SkuInput!]!) { upsertSkus(input: $i) { userErrors { code message } } }",
                {"i": [{"code": s, "name": s} for s in skus]},
            ),
        ]
        events = [
            {
                "source": "bench-push",
                "externalId": f"load-{s}",
                "type": "RECEIVED",
                "skuCode": s,
                "locationCode": LOCATION,
                "quantity": 1_000_000,
                "occurredAt": "2026-01-01T00:00:00Z",
            }
            for s in skus
        ]
        for start in range(0, len(events), 500):
            mutations.append((RECORD, {"input": events[start : start + 500]}))
        for query, variables in mutations:
            out = await graphql(c, query, variables)
            blob = json.dumps(out)
            if out.get("errors") or '"code"' in blob:
                raise RuntimeError(f"loading the catalogue failed: {blob[:500]}")
    finally:
        await c.close()


def subscribe_spread(conns: list[WsConnection], skus: list[str], per_sku: int) -> dict[str, str]:
    """per_sku subscriptions to each SKU, PER_CONNECTION per connection; returns operation id -> SKU."""
    ops: dict[str, str] = {}
    n = 0
    for copy in range(per_sku):
        for sku in skus:
            op = f"{copy}-{sku}"
            conns[n // PER_CONNECTION].subscribe(op, [sku])
            ops[op] = sku
            n += 1
    return ops


# --- phases -----------------------------------------------------------------------------------------


async def memory_phase(
    a: Server, key: str | None, skus: list[str], idle: int, profiled: bool = False
) -> dict[str, float]:
    pids = a.pids()
    warm = Receipts()
    conns = await open_connections(a.port, key, 20, warm)  # first-use costs (imports, caches) out of the way
    for i, c in enumerate(conns):
        c.subscribe(f"w{i}", [skus[i % len(skus)]])
    await wait_for_messages(warm, len(conns), "the warm-up subscriptions")
    close_all(conns)
    await asyncio.sleep(1.0)
    before = rss_kb(pids)
    if profiled:
        os.kill(a.proc.pid, signal.SIGUSR1)
    sink = Receipts()
    say(f"memory: RSS of server A {before / 1024:.1f} MB; opening {idle} connections, one subscription each")
    t0 = time.monotonic()
    conns = await open_connections(a.port, key, idle, sink)
    say(f"  {idle} connections acknowledged in {time.monotonic() - t0:.1f}s; subscribing")
    for i, c in enumerate(conns):
        c.subscribe(str(i), [skus[i % len(skus)]])
    await wait_for_messages(sink, idle, "the initial states")
    say(f"  {idle} subscriptions have their initial state after {time.monotonic() - t0:.1f}s; idling 3 s")
    await asyncio.sleep(3.0)
    after = rss_kb(pids)
    if profiled:
        os.kill(a.proc.pid, signal.SIGUSR2)
    alive = sum(not c.closed for c in conns)
    close_all(conns)
    await asyncio.sleep(1.0)
    return {"before_kb": before, "after_kb": after, "subscribers": alive, "per_sub_kb": (after - before) / idle}


async def latency_phase(
    a: Server,
    b: Server,
    key: str | None,
    skus: list[str],
    per_sku: int,
    rate: float,
    seconds: float,
    channel: str,
    db: str,
    profiled: bool = False,
    warmup: float = 0.0,
) -> dict[str, Any]:
    if warmup > 0:
        # the same load for a while first, unmeasured: each of B's pooled connections (opened at its start,
        # Database.warm) runs asyncpg's type introspection and prepares its statements at its first use
        say(f"latency: warming up, {rate:.0f} changes/s through B for {warmup:g} s (not measured)")
        async with Writer(b.port) as writer:
            await writer.run(skus, rate, warmup)
        await asyncio.sleep(1.0)
    sink = Receipts()
    n_subs = len(skus) * per_sku
    conns = await open_connections(a.port, key, -(-n_subs // PER_CONNECTION), sink)
    ops = subscribe_spread(conns, skus, per_sku)
    op_conn = {op: i // PER_CONNECTION for i, op in enumerate(ops)}
    await wait_for_messages(sink, n_subs, "the initial states")
    say(f"latency: {n_subs} subscriptions on A over {len(conns)} connections have their initial state")
    initial = {op: p for _, op, p in sink.parsed()}
    base = {sku: p["available"] for sku, p in ((ops[op], p) for op, p in initial.items())}
    sink.raw.clear()

    # what went through Redis: tells a publication problem from a delivery problem
    from redis.asyncio import Redis

    published: dict[str, int] = {}
    on_redis: dict[tuple[str, int], float] = {}  # (SKU, version) -> when the bench heard it on Redis
    listener = Redis.from_url(REDIS_URL)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)

    async def listen() -> None:
        while True:
            m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if m is None:
                continue
            now = time.time()
            body = json.loads(m["data"])
            for c in body.get("changes", [body]):
                if c["kind"].partition("@")[0] == "availability":  # kinds end in @<tenant> (codec.scoped)
                    published[c["key"]] = max(published.get(c["key"], 0), c["version"])
                    on_redis.setdefault((c["key"], c["version"]), now)

    listening = asyncio.create_task(listen())
    servers = a.pids() + b.pids()
    cpu0 = cpu_snapshot(servers, None)
    for server in (a, b) if profiled else ():
        os.kill(server.proc.pid, signal.SIGUSR1)  # _profiled_server.py: start measuring
    # the load generator's own cyclic GC stays out of the measured phase: a full collection of its heap
    # paused its event loop 27-43 ms once per run ("bench loop late max"), then sent the changes due
    # meanwhile at once, and stamped their receipts late (bench/README.md, round h24)
    gc.collect()
    gc.freeze()
    gc.disable()
    clocks = Clocks({"A": a.port, "B": b.port})
    await clocks.start()
    phase_start = time.time()
    try:
        async with Writer(b.port) as writer:
            await writer.run(skus, rate, seconds)
    finally:
        gc.enable()
        gc.unfreeze()
        await clocks.stop()
    cpu1 = cpu_snapshot(servers, None)
    for server in (a, b) if profiled else ():
        os.kill(server.proc.pid, signal.SIGUSR2)  # stop measuring, write the report
    say(f"  {len(writer.changes)} changes committed through B ({writer.late} waited for a free connection)")
    final = await truth(b.port, skus)
    expected = {op: final[sku]["available"] for op, sku in ops.items()}

    last: dict[str, int] = {op: p["available"] for op, p in initial.items()}
    parsed = 0

    def converged() -> bool:
        nonlocal parsed  # parse only what arrived since the last look: the load generator stays cheap
        for _, raw in sink.raw[parsed:]:
            m = json.loads(raw)
            last[m["id"]] = m["payload"]["data"]["availabilityChanged"]["available"]
        parsed = len(sink.raw)
        return all(last[op] == want for op, want in expected.items())

    deadline = time.monotonic() + 30
    while not converged() and time.monotonic() < deadline:  # noqa: ASYNC110 (polls what callbacks collect)
        await asyncio.sleep(0.5)
    close_all(conns)
    listening.cancel()
    await pubsub.aclose()
    await listener.aclose()
    stale = sorted(s for s in skus if published.get(s, 0) < final[s]["version"])
    if stale:
        import asyncpg

        pg = await asyncpg.connect(pg_dsn(db))
        try:
            left = await pg.fetchval("SELECT count(*) FROM outbox")
        finally:
            await pg.close()
        say(f"  SKUs whose latest version never went through Redis: {len(stale)} {stale[:5]}; outbox rows: {left}")

    # the k-th change of a SKU made it base + k: that is how a receipt finds its change
    by_figure: dict[tuple[str, int], Change] = {}
    count: dict[str, int] = defaultdict(int)
    for ch in writer.changes:
        if ch.ok:
            count[ch.sku] += 1
            by_figure[(ch.sku, base[ch.sku] + count[ch.sku])] = ch
    after_response, from_stamp, from_send = [], [], []
    timeline: list[tuple[float, float, float | None]] = []  # (updatedAt, receipt, heard on Redis)
    last_version: dict[str, int] = {op: p["version"] for op, p in initial.items()}
    regressions = unmatched = 0
    final_ok = 0
    last_seen: dict[str, int] = {}
    for at, op, p in sink.parsed():
        if p["version"] <= last_version[op]:
            regressions += 1
        last_version[op] = p["version"]
        last_seen[op] = p["available"]
        ch = by_figure.get((ops[op], p["available"]))
        if ch is None:
            unmatched += 1
            continue
        after_response.append(at - ch.answered)
        from_send.append(at - ch.sent)
        stamp = datetime.fromisoformat(p["locations"][0]["updatedAt"]).timestamp()
        from_stamp.append(at - stamp)
        timeline.append((stamp, at, on_redis.get((ops[op], p["version"]))))
    behind = [op for op, want in expected.items() if last_seen.get(op, initial[op]["available"]) != want]
    final_ok = len(expected) - len(behind)
    if behind:
        per_conn: dict[int, int] = defaultdict(int)
        for op in behind:
            per_conn[op_conn[op]] += 1
        say(f"  behind per connection: {dict(sorted(per_conn.items()))}; closed: {[c.closed for c in conns]}")
    for op in behind[:5]:  # what a subscriber that did not end at the truth saw
        got = [(p["available"], p["version"]) for _, o, p in sink.parsed() if o == op]
        say(
            f"  NOT AT THE TRUE STATE: {op} initial {initial[op]['available']}, received {got[-5:]}, "
            f"truth {final[ops[op]]}"
        )
    ok_changes = sum(ch.ok for ch in writer.changes)
    return {
        "subs": n_subs,
        "connections": len(conns),
        "changes": ok_changes,
        "expected_receipts": ok_changes * per_sku,
        "receipts": len(sink.raw),
        "unmatched": unmatched,
        "regressions": regressions,
        "final_ok": final_ok,
        "after_response": after_response,
        "from_stamp": from_stamp,
        "from_send": from_send,
        "errors": sink.errors,
        "cpu": cpu_delta(cpu0, cpu1),
        # each server's share (the servers' CPU split: A fans out, B writes and relays)
        "cpu_a_s": sum(cpu1.server[p] - cpu0.server.get(p, 0.0) for p in a.pids() if p in cpu1.server),
        "timeline": timeline,
        "clocks": clocks,
        "phase_start": phase_start,
        "seconds": seconds,
    }


async def fanout_phase(
    a: Server, b: Server, key: str | None, sku: str, n: int, rounds: int = 5, profiled: bool = False
) -> dict[str, Any]:
    sink = Receipts()
    conns = await open_connections(a.port, key, -(-n // PER_CONNECTION), sink)
    for i in range(n):
        conns[i // PER_CONNECTION].subscribe(f"f{i}", [sku])
    await wait_for_messages(sink, n, "the initial states")
    say(f"fan-out: {n} subscriptions of {sku} on A over {len(conns)} connections")
    firsts, lasts, lasts_from_stamp, complete = [], [], [], 0
    cpu_a: list[float] = []  # server A's CPU seconds per message delivered, per round (robust to a busy machine)
    if profiled:
        os.kill(a.proc.pid, signal.SIGUSR1)  # _profiled_server.py: A's second report is the fan-out rounds
    for r in range(rounds):
        await asyncio.sleep(1.0)
        sink.raw.clear()
        async with Writer(b.port, connections=1) as writer:  # a fresh connection: idle ones get closed
            before = cpu_snapshot(a.pids())
            change = await writer.change(sku)
            deadline = time.monotonic() + 10
            while len(sink.raw) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            cpu_a.append(cpu_delta(before, cpu_snapshot(a.pids())).server_s / max(1, len(sink.raw)))
            got = sink.parsed()
            complete += len(got) == n
            if got:
                arrivals = [at for at, _, _ in got]
                stamp = datetime.fromisoformat(got[0][2]["locations"][0]["updatedAt"]).timestamp()
                firsts.append(min(arrivals) - change.answered)
                lasts.append(max(arrivals) - change.answered)
                lasts_from_stamp.append(max(arrivals) - stamp)
            say(f"  round {r + 1}: {len(got)}/{n} received; last {lasts[-1] * 1000 if got else float('nan'):.1f} ms")
    if profiled:
        os.kill(a.proc.pid, signal.SIGUSR2)
    close_all(conns)
    return {
        "first": firsts,
        "last": lasts,
        "last_stamp": lasts_from_stamp,
        "complete": complete,
        "rounds": rounds,
        "cpu_a": cpu_a,
    }


# --- the run -----------------------------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x * 1000:8.1f}"


async def amain(a: argparse.Namespace) -> int:
    skus = [sku_code(i) for i in range(a.skus)]
    fan_sku = skus[0]
    channel = f"stockwire.bench.push.{uuid.uuid4().hex[:12]}"
    env = {
        "STOCKWIRE_BROADCAST_URL": REDIS_URL,
        "STOCKWIRE_BROADCAST_CHANNEL": channel,
        # every subscriber of the bench comes from 127.0.0.1: the per-address caps (100 connections,
        # 1,000 subscriptions: README Limits) would refuse the idle phase's thousands
        "STOCKWIRE_MAX_CONNECTIONS_PER_ADDRESS": str(max(a.idle, a.fanout) + 100),
        "STOCKWIRE_MAX_SUBSCRIPTIONS_PER_ADDRESS": str(max(a.idle, a.fanout, a.skus * a.per_sku) + 100),
    }
    stop_on_sigterm()
    started: list[Server] = []
    failed = True  # until the run gets to its sanity check: keep the server logs of a crashed run
    try:
        say(f"re-creating database {a.db} and migrating")
        await recreate_database(a.db)
        migrate(a.db)
        key = create_api_key(a.db, "admin,integration,storefront")
        set_api_key(key)
        for name in ("A", "B"):
            argv = None
            if a.profile:
                out = f"/tmp/stockwire-push-prof-{name}"
                for old in Path("/tmp").glob(f"stockwire-push-prof-{name}.*"):  # noqa: ASYNC240 (before any load)
                    old.unlink()  # print_profile waits for the file: an old one would be printed instead
                argv = [PYTHON, "bench/_profiled_server.py", "--port", "{port}", "--out", out, "--mode", a.profile]
            server = start_server(a.db, extra_env=env, argv=argv)
            started.append(server)
            await wait_ready(server)
            say(f"server {name} ready on port {server.port} (pid {server.proc.pid}), channel {channel}")
        srv_a, srv_b = started
        await load_catalogue(srv_b.port, skus)
        say(f"loaded {len(skus)} SKUs at {LOCATION} through B")

        say(f"raw baseline: Redis PUBLISH -> receive at {a.rate:.0f}/s for 5 s")
        raw = await raw_redis_baseline(a.rate, 5.0)

        mem = None
        if not a.skip_memory:
            mem = await memory_phase(srv_a, key, skus, a.idle, profiled=a.profile == "tracemalloc")
        if a.memory_only:
            assert mem is not None
            print(f"memory: {mem['per_sub_kb']:.1f} KB per idle subscriber ({mem['subscribers']} connected)")
            if a.profile == "tracemalloc":
                print_profile(a.profile, "/tmp/stockwire-push-prof-A", ["server A, memory phase"])
            failed = False
            return 0
        lat = await latency_phase(
            srv_a,
            srv_b,
            key,
            skus,
            a.per_sku,
            a.rate,
            a.seconds,
            channel,
            a.db,
            profiled=a.profile in ("sample", "cprofile"),
            warmup=a.warmup,
        )
        fan = await fanout_phase(srv_a, srv_b, key, fan_sku, a.fanout, profiled=a.profile in ("sample", "cprofile"))

        print()
        print(
            f"push latency: {lat['changes']} changes through B at {a.rate:.0f}/s over {len(skus)} SKUs, "
            f"{lat['subs']} subscribers on A ({a.per_sku} per SKU, {PER_CONNECTION} per connection)"
        )
        print(f"{'commit -> receipt (ms)':<44}{'p50':>8}{'p99':>9}{'max':>9}   n")
        rows = [
            ("raw Redis PUBLISH -> receive (baseline)", raw),
            ("service: after B's response (lower bound)", lat["after_response"]),
            ("service: from updatedAt (upper bound)", lat["from_stamp"]),
            ("service: from the writer's send", lat["from_send"]),
        ]
        for label, values in rows:
            print(
                f"{label:<44}{ms(pct(values, 0.5))} {ms(pct(values, 0.99))} {ms(max(values, default=float('nan')))}"
                f"   {len(values)}"
            )
        p50 = pct(lat["from_stamp"], 0.5)
        p99 = pct(lat["from_stamp"], 0.99)
        raw50 = pct(raw, 0.5)
        print(
            f"targets p50 <= 5 ms, p99 <= 25 ms (upper bound): p50 {'MET' if p50 <= 0.005 else 'MISSED'}, "
            f"p99 {'MET' if p99 <= 0.025 else 'MISSED'}; service p50 / raw Redis p50 = {p50 / raw50:.1f}x"
        )
        c = lat["cpu"]
        print(
            f"CPU per change (latency phase): servers A+B {c.server_s / max(1, lat['changes']) * 1e6:.0f} us "
            f"(A {lat['cpu_a_s'] / max(1, lat['changes']) * 1e6:.0f}), "
            f"postgres {c.postgres_s / max(1, lat['changes']) * 1e6:.0f} us (all databases), bench "
            f"{c.client_s / max(1, lat['changes']) * 1e6:.0f} us; machine busy {c.machine_busy_pct:.0f}%, "
            f"other processes {c.others_cores:.2f} cores"
        )
        print(
            f"receipts {lat['receipts']} of {lat['expected_receipts']} expected (fewer: coalesced to the latest), "
            f"unmatched {lat['unmatched']}, version regressions {lat['regressions']}, "
            f"subscribers at the true final state {lat['final_ok']}/{lat['subs']}, errors {len(lat['errors'])}"
        )
        timeline = lat["timeline"]
        b_side = [r - s for s, _, r in timeline if r is not None]
        a_side = [at - r for _, at, r in timeline if r is not None]
        print(
            f"where: updatedAt -> heard on Redis (B: commit, relay, publish) p50 {ms(pct(b_side, 0.5)).strip()} "
            f"p99 {ms(pct(b_side, 0.99)).strip()} ms; Redis -> receipt (A, websocket, bench) "
            f"p50 {ms(pct(a_side, 0.5)).strip()} p99 {ms(pct(a_side, 0.99)).strip()} ms"
        )
        print(f"clocks: {lat['clocks'].summary()}")
        windows = stall_windows(timeline, lat["clocks"], lat["phase_start"])
        print(f"stall windows (receipts > 50 ms from updatedAt): {len(windows)}")
        for line in windows[:12]:
            print(line)
        print()
        print(
            f"fan-out: one change through B to {a.fanout} subscribers of one SKU on A, {fan['rounds']} rounds, "
            f"{fan['complete']} complete"
        )
        print(f"{'':<44}{'median':>8}{'max':>9}")
        for label, values in (
            ("first subscriber, after B's response (ms)", fan["first"]),
            ("last subscriber, after B's response (ms)", fan["last"]),
            ("last subscriber, from updatedAt (ms)", fan["last_stamp"]),
        ):
            print(
                f"{label:<44}{ms(statistics.median(values) if values else float('nan'))} "
                f"{ms(max(values, default=float('nan')))}"
            )
        if fan["cpu_a"]:
            print(
                f"server A CPU per subscriber reached (hub, execution, encoding, websocket write): median "
                f"{statistics.median(fan['cpu_a']) * 1e6:.0f} us, max {max(fan['cpu_a']) * 1e6:.0f} us "
                f"(x {a.fanout} subscribers = the last one's time on an idle core)"
            )
        last = statistics.median(fan["last_stamp"]) if fan["last_stamp"] else float("nan")
        print(f"target last <= 50 ms (from updatedAt, median): {'MET' if last <= 0.05 else 'MISSED'}")
        if mem is not None:
            print()
            print(
                f"memory: server A RSS {mem['before_kb'] / 1024:.1f} MB -> {mem['after_kb'] / 1024:.1f} MB with "
                f"{mem['subscribers']} idle subscribers (one connection + one subscription each): "
                f"{mem['per_sub_kb']:.1f} KB per subscriber (target <= 30 KB: "
                f"{'MET' if mem['per_sub_kb'] <= 30 else 'MISSED'}; a bare Strawberry server: about 97 KB)"
            )
        if a.profile in ("sample", "cprofile"):
            labels = {"A": ["server A, latency phase", "server A, fan-out rounds"], "B": ["server B, latency phase"]}
            for name, phases in labels.items():
                print_profile(a.profile, f"/tmp/stockwire-push-prof-{name}", phases)
        failed = bool(lat["regressions"] or lat["final_ok"] != lat["subs"] or lat["errors"])
        if failed:
            print("SANITY FAILED: see the receipts line above")
    finally:
        for server in started:
            server.stop()
            if failed:
                say(f"server log kept: {server.log_path}")
            else:
                server.discard_log()
        if not a.keep_db:
            with contextlib.suppress(Exception):
                await drop_database(a.db)
                say(f"dropped database {a.db}")
    return 1 if failed else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds of the latency phase (default 15)")
    p.add_argument("--rate", type=float, default=200.0, help="changes per second (default 200)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds of the same load first (default 3)")
    p.add_argument("--skus", type=int, default=200, help="SKUs the changes spread over (default 200)")
    p.add_argument("--per-sku", type=int, default=5, help="subscribers per SKU in the latency phase (default 5)")
    p.add_argument("--fanout", type=int, default=1000, help="subscribers of the one SKU in the fan-out phase")
    p.add_argument("--idle", type=int, default=10000, help="idle subscribers (connections) for memory")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory phase")
    p.add_argument("--memory-only", action="store_true", help="only the memory phase")
    p.add_argument(
        "--db", default=run_database("push"), help="database to (re-)create (default: one per run, dropped after)"
    )
    p.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    p.add_argument(
        "--profile",
        choices=("sample", "cprofile", "tracemalloc"),
        help="profile both servers in the latency phase (tracemalloc: server A in the memory phase)",
    )
    run_bench(amain(p.parse_args()))


if __name__ == "__main__":
    main()
