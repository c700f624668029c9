"""Server memory under the websocket attack of issue 12, item 2, and after the attackers leave.

    .venv/bin/python bench/ws_memory.py [--sockets 40] [--subscriptions 100] [--codes 1000]

Starts `stockwire serve` on a throw-away embedded PostgreSQL (in-memory broadcast), then opens `--sockets`
websockets (each from its own loopback address, 127.0.0.x, so the per-address caps do not refuse
them), each with `--subscriptions` availability subscriptions of `--codes` random unknown SKU codes
plus one known SKU (whose snapshot message says the subscription is in place). Prints the server's
RSS (VmRSS from /proc) before, with everything open, and after every socket closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.db.embedded import EmbeddedPostgres  # noqa: E402
from app.db.engine import Database  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.security import keys  # noqa: E402
from app.security.scopes import Scope  # noqa: E402
from bench._common import free_port, own_env  # noqa: E402

SUB = "subscription($s: [String!]) { availabilityChanged(skuCodes: $s) { skuCode } }"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def prepare(url: str) -> str:
    db = Database(url)
    try:
        await upgrade(db.engine)
        return (await keys.create_key(db, "bench", [Scope.ADMIN, Scope.STOREFRONT])).secret
    finally:
        await db.dispose()


async def attacker(url: str, key: str, address: str, subscriptions: int, codes: int) -> ClientConnection:
    ws = await connect(
        url, subprotocols=["graphql-transport-ws"], local_addr=(address, 0), max_size=None, ping_interval=None
    )  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {key}"}}))
    while json.loads(await ws.recv())["type"] != "connection_ack":
        pass  # acked before the flood: a busy server would otherwise time the init out (4408)
    for i in range(subscriptions):
        wanted = [secrets.token_hex(8) for _ in range(codes)] + ["SKU-1"]
        payload = {"query": SUB, "variables": {"s": wanted}}
        await ws.send(json.dumps({"type": "subscribe", "id": str(i), "payload": payload}))
    started = 0
    while started < subscriptions:
        message = json.loads(await ws.recv())
        if message["type"] in ("next", "error"):
            started += 1
    return ws


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=40)
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--codes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(tmp) as embedded:
        url = embedded.start()
        key = await prepare(url)
        port = free_port()
        env = own_env(STOCKWIRE_DATABASE_URL=url, STOCKWIRE_BROADCAST_URL="memory://")
        command = [sys.executable, "-c", "from app.cli import main; main()", "serve", "--port", str(port)]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)  # noqa: ASYNC220
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("server not ready")
                    await asyncio.sleep(0.1)
                upsert = "mutation($i: [SkuInput!]!) { upsertSkus(input: $i) { userErrors { code } } }"
                await http.post(
                    "/graphql", json={"query": upsert, "variables": {"i": [{"code": "SKU-1", "name": "x"}]}}
                )
            await asyncio.sleep(1)
            before = rss_mb(server.pid)
            print(f"RSS before: {before:.1f} MB")
            t0 = time.monotonic()
            sockets = await asyncio.gather(
                *(
                    attacker(f"ws://127.0.0.1:{port}/graphql", key, f"127.0.0.{2 + n}", args.subscriptions, args.codes)
                    for n in range(args.sockets)
                )
            )
            total = args.sockets * args.subscriptions
            print(
                f"RSS with {args.sockets} sockets x {args.subscriptions} subscriptions x {args.codes} unknown codes "
                f"open ({total} subscriptions in {time.monotonic() - t0:.1f} s): {rss_mb(server.pid):.1f} MB"
            )
            for ws in sockets:
                await ws.close()
            await asyncio.sleep(3)
            print(f"RSS 3 s after every socket closed: {rss_mb(server.pid):.1f} MB (before: {before:.1f} MB)")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
