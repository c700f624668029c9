"""The request cost limit (issue 12, item 1) on PostgreSQL, with the storefront key.

The costly request: 20 aliases of `availability(skuCodes: $c) { ... locations { every field } }` with
`$c` = 1,000 copies of one code (13 KB). Before the limit it took 4.5 s and answered 16.4 MB, and four
clients sending it in a loop took a one-code `availability` from 5-16 ms to 2-16 s.

Prints:
- how long the refusal (QUERY_TOO_COSTLY) takes, median and worst of `--refusals` calls (goal: < 50 ms),
  each from a key and a client address of its own (127.0.1.x): each is a first refusal, answered at once;
- how long a repeat from the same key and address takes: the penalty (`cost_penalty_seconds`, 1 s);
- the p95 of a plain one-code `availability` idle, and while four clients send the costly request in a
  loop, and their ratio (goal: < 2): their repeats wait the penalty, so they keep nobody else waiting;
- with `--without-limit`, the same costly request on a server with the limit off, for comparison.

    .venv/bin/python bench/cost_limit.py [--samples 300] [--without-limit]

Starts its own server on a database of its own and stops both in every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    RawHttp,
    Server,
    create_api_key,
    drop_database,
    graphql,
    migrate,
    own_env,
    recreate_database,
    run_bench,
    run_database,
    sa_url,
    say,
    set_api_key,
    start_server,
    stop_on_sigterm,
    wait_ready,
)

LOCATIONS = 10
SKUS = 50
FIELDS = "skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version"
COSTLY = (
    "query($c: [String!]!) { "
    + " ".join(
        f"a{i}: availability(skuCodes: $c) {{ skuCode available oversold version locations {{ {FIELDS} }} }}"
        for i in range(20)
    )
    + " }"
)
COSTLY_BODY = json.dumps({"query": COSTLY, "variables": {"c": ["SKU-1"] * 1000}}).encode()
PLAIN = json.dumps({"query": 'query { availability(skuCodes: ["SKU-2"]) { skuCode available } }'}).encode()


_CREATE_KEYS_PY = """
import asyncio, sys
from app.db.engine import Database
from app.security import keys
from app.security.scopes import parse_scopes

async def main():
    db = Database(sys.argv[1])
    try:
        for _ in range(int(sys.argv[3])):
            print((await keys.create_key(db, "bench", parse_scopes(sys.argv[2].split(",")))).secret)
    finally:
        await db.dispose()

asyncio.run(main())
"""


def create_keys(db: str, scopes: str, n: int) -> list[str]:
    """`n` API keys in one process (`stockwire keys create` starts one per key)."""
    env = own_env(STOCKWIRE_DATABASE_URL=sa_url(db))
    out = subprocess.run(
        [PYTHON, "-c", _CREATE_KEYS_PY, sa_url(db), scopes, str(n)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise SystemExit(f"creating API keys failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.split()[-n:]


class ClientAt(RawHttp):
    """A connection from a given loopback address (all of 127/8 is local on Linux) with a given key:
    a client the server has not seen before, so the cost penalty does not apply to its first refusal."""

    def __init__(self, port: int, key: str, address: str) -> None:
        super().__init__("127.0.0.1", port, {"Authorization": f"Bearer {key}"})
        self.address = address

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, local_addr=(self.address, 0))
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def seed(port: int) -> None:
    client = RawHttp("127.0.0.1", port)
    await client.connect()
    try:
        skus = [{"code": f"SKU-{i}", "name": f"SKU {i}"} for i in range(1, SKUS + 1)]
        locs = [{"code": f"WH-{i}", "name": f"WH {i}", "kind": "WAREHOUSE"} for i in range(1, LOCATIONS + 1)]
        await graphql(
            client, "mutation($i: [SkuInput!]!) { upsertSkus(input: $i) { userErrors { code } } }", {"i": skus}
        )
        await graphql(
            client,
            "mutation($i: [LocationInput!]!) { upsertLocations(input: $i) { userErrors { code } } }",
            {"i": locs},
        )
        events = [
            {
                "source": "bench",
                "externalId": f"{s['code']}@{loc['code']}",
                "type": "RECEIVED",
                "skuCode": s["code"],
                "locationCode": loc["code"],
                "quantity": 100,
                "occurredAt": "2026-01-01T09:00:00Z",
            }
            for s in skus
            for loc in locs
        ]
        for start in range(0, len(events), 500):
            out = await graphql(
                client,
                "mutation($i: [InventoryEventInput!]!) { recordInventoryEvents(input: $i) { userErrors { code } } }",
                {"i": events[start : start + 500]},
            )
            assert out["data"]["recordInventoryEvents"]["userErrors"] == [], out
    finally:
        await client.close()


async def timed(client: RawHttp, body: bytes) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    status, data = await client.request("POST", "/graphql", body)
    return (time.perf_counter() - t0) * 1000, status, data


async def plain_p95(port: int, samples: int) -> float:
    client = RawHttp("127.0.0.1", port)
    await client.connect()
    try:
        for _ in range(20):  # warm-up
            await timed(client, PLAIN)
        took = []
        for _ in range(samples):
            ms, status, data = await timed(client, PLAIN)
            assert status == 200 and b'"errors"' not in data, data[:300]
            took.append(ms)
        return p95(took)
    finally:
        await client.close()


async def hammer(port: int, stop: asyncio.Event, sent: list[int]) -> None:
    client = RawHttp("127.0.0.1", port)
    await client.connect()
    try:
        while not stop.is_set():
            _, _, data = await timed(client, COSTLY_BODY)
            assert b"QUERY_TOO_COSTLY" in data, data[:300]
            sent[0] += 1
            sent[1] += b'"penaltySeconds"' in data
    finally:
        await client.close()


async def without_limit(db: str) -> None:
    server = start_server(db, extra_env={"STOCKWIRE_MAX_QUERY_COST": "0", "STOCKWIRE_MAX_RESPONSE_BYTES": str(2**30)})
    try:
        await wait_ready(server)
        client = RawHttp("127.0.0.1", server.port)
        await client.connect()
        try:
            ms, status, data = await timed(client, COSTLY_BODY)
            say(f"without the limit: HTTP {status}, {ms:.0f} ms, {len(data) / 1e6:.1f} MB answered")
        finally:
            await client.close()
    finally:
        server.stop()
        server.discard_log()


async def main(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    db = run_database("cost")
    server: Server | None = None
    try:
        await recreate_database(db)
        migrate(db)
        set_api_key(create_api_key(db, "admin,integration"))
        server = start_server(db)
        await wait_ready(server)
        await seed(server.port)
        set_api_key(create_api_key(db, "storefront"))  # every request below: the public key

        refusals = []
        for n, key in enumerate(create_keys(db, "storefront", args.refusals)):
            client = ClientAt(server.port, key, f"127.0.1.{n + 1}")
            await client.connect()
            try:
                await timed(client, PLAIN)  # the key's lookup (cached afterwards) is not the refusal's
                ms, _status, data = await timed(client, COSTLY_BODY)
                error = json.loads(data)["errors"][0]
                assert error["extensions"]["code"] == "QUERY_TOO_COSTLY", data[:300]
                assert "penaltySeconds" not in error["extensions"], data[:300]
                refusals.append(ms)
                if n == args.refusals - 1:  # the same request again from the same client: a repeat
                    repeat_ms, _status, data = await timed(client, COSTLY_BODY)
                    penalty = json.loads(data)["errors"][0]["extensions"].get("penaltySeconds")
            finally:
                await client.close()
        refusals.sort()
        median = refusals[len(refusals) // 2]
        ext = error["extensions"]
        say(
            f"costly request ({len(COSTLY_BODY)} bytes, cost {ext['cost']} > limit {ext['limit']}): refused "
            f"in median {median:.1f} ms, worst {refusals[-1]:.1f} ms over {len(refusals)} keys and addresses "
            f"({'ok' if refusals[-1] < 50 else 'OVER'} < 50 ms); a repeat from the same key and address: "
            f"answered after {repeat_ms:.0f} ms (penaltySeconds {penalty})"
        )

        idle = await plain_p95(server.port, args.samples)
        stop, sent = asyncio.Event(), [0, 0]
        hammers = [asyncio.create_task(hammer(server.port, stop, sent)) for _ in range(4)]
        try:
            await asyncio.sleep(0.5)
            loaded = await plain_p95(server.port, args.samples)
        finally:
            stop.set()
            await asyncio.gather(*hammers)
        ratio = loaded / idle
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        say(
            f"one-code availability p95: idle {idle:.2f} ms, with 4 clients looping the costly request "
            f"{loaded:.2f} ms ({sent[0]} refused meanwhile, {sent[1]} of them after the penalty)"
            f"; ratio {ratio:.2f} ({'ok' if ratio < 2 else 'OVER'} < 2)"
            f"; load average {load}"
        )
        if args.without_limit:
            server.stop()
            server = None
            await without_limit(db)
        return 0 if refusals[-1] < 50 and ratio < 2 else 1
    finally:
        if server is not None:
            server.stop()
            server.discard_log()
        await drop_database(db)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="one-code requests per p95")
    parser.add_argument("--refusals", type=int, default=50, help="costly requests timed one by one")
    parser.add_argument("--without-limit", action="store_true", help="also time the costly request with no limit")
    run_bench(main(parser.parse_args()))
