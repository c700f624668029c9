#!/usr/bin/env bash
# The fleet of README "Fleet" (docker-compose.yml) tried by hand, where there is no Docker daemon:
# a fresh PostgreSQL database, `stockwire migrate` once, two `stockwire serve` processes sharing it and
# one Redis channel, and nginx in front with deploy/nginx.conf (only its upstreams, listen address, pid
# and temporary paths changed, to 127.0.0.1 and a temporary directory). Through nginx it runs a GraphQL
# query, /readyz, a websocket subscription that receives a change made through the other replica, and
# /metrics of each replica. Everything it started is stopped (by PID) and the database dropped on
# every exit path, Ctrl-C included.
#
#   deploy/try-fleet.sh            (from a checkout with .venv: ./dev test -k nothing installs it)
#
# Environment: STOCKWIRE_PYTHON (the Python with stockwire installed; default .venv/bin/python),
# TRY_POSTGRES_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres: may create databases),
# TRY_REDIS_URL (default redis://127.0.0.1:6379), NGINX (default: nginx on PATH, else /usr/sbin/nginx).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${STOCKWIRE_PYTHON:-$root/.venv/bin/python}
stockwire=$(dirname "$python")/stockwire
admin_url=${TRY_POSTGRES_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
redis_url=${TRY_REDIS_URL:-redis://127.0.0.1:6379}
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for tool in "$python" "$stockwire" "$nginx"; do
    [[ -x $tool ]] || { echo "try-fleet: $tool is missing (apt-get install nginx; ./dev test -k nothing)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/stockwire-fleet.XXXXXX)
chmod 0711 "$work"  # nginx's workers (user nobody when started as root) reach their temporary files in it
run_id="$$_${RANDOM}"
database="stockwire_fleet_${run_id}"
database_url="postgresql+asyncpg://${admin_url#*://}"
database_url="${database_url%/*}/${database}"
channel="stockwire.fleet.${run_id}"  # this fleet's own Redis channel: others on the same Redis are not heard
pids=()
database_made=0

say() { printf '== %s\n' "$*"; }

stop() {  # SIGTERM, then SIGKILL after 10 s: the PID is this shell's child, so it is not reused meanwhile
    local pid=$1 watchdog
    kill -TERM "$pid" 2>/dev/null || return 0
    (sleep 10; kill -KILL "$pid" 2>/dev/null) &
    watchdog=$!
    wait "$pid" 2>/dev/null || true
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
}

admin_sql() {  # one statement on the admin database, with the driver stockwire already installs
    "$python" -c 'import asyncio, sys, asyncpg
async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1])
    try:
        await conn.execute(sys.argv[2])
    finally:
        await conn.close()
asyncio.run(main())' "$admin_url" "$1"
}

cleanup() {
    local status=$?
    trap - EXIT
    trap '' INT TERM  # a second Ctrl-C must not leave processes or the database behind
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[i]}"; done
    if ((database_made)); then admin_sql "DROP DATABASE IF EXISTS ${database} WITH (FORCE)" || status=1; fi
    if ((status != 0)); then
        for log in "$work"/*.log; do [[ -s $log ]] && { echo "--- $log (last lines)"; tail -n 20 "$log"; }; done
    fi
    rm -rf "$work"
    say "stopped ${#pids[@]} processes, dropped ${database}; exit ${status}"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() {
    "$python" -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}
read -r port_1 port_2 edge_port < <(free_ports)

say "database ${database}, Redis ${redis_url} channel ${channel}"
admin_sql "CREATE DATABASE ${database}"
database_made=1
export STOCKWIRE_DATABASE_URL=$database_url STOCKWIRE_BROADCAST_URL=$redis_url STOCKWIRE_BROADCAST_CHANNEL=$channel
"$stockwire" migrate >"$work/migrate.log" 2>&1
say "migrated once: $(tail -n 1 "$work/migrate.log")"
"$stockwire" keys create --scopes storefront,integration,admin --name try-fleet >"$work/key.out" 2>"$work/key.log"
key=$(tail -n 1 "$work/key.out")
say "$(head -n 1 "$work/key.out")"

for n in 1 2; do
    port_var="port_$n"
    "$stockwire" serve --host 127.0.0.1 --port "${!port_var}" >"$work/replica-$n.log" 2>&1 &
    pids+=("$!")
    say "replica-$n: stockwire serve on 127.0.0.1:${!port_var} (pid $!)"
done

# deploy/nginx.conf with only what differs outside compose; each change must apply, or the file changed
sed -e "s|^pid .*;|pid ${work}/nginx.pid;|" \
    -e "s|/tmp/stockwire-nginx-|${work}/nginx-|" \
    -e "s|server stockwire-1:8000 |server 127.0.0.1:${port_1} |" \
    -e "s|server stockwire-2:8000 |server 127.0.0.1:${port_2} |" \
    -e "s|listen 8080;|listen 127.0.0.1:${edge_port};|" \
    "$root/deploy/nginx.conf" >"$work/nginx.conf"
for expected in "pid ${work}/nginx.pid;" "server 127.0.0.1:${port_1} " "server 127.0.0.1:${port_2} " \
    "listen 127.0.0.1:${edge_port};" "proxy_temp_path ${work}/nginx-proxy;"; do
    grep -qF "$expected" "$work/nginx.conf" || { echo "try-fleet: deploy/nginx.conf no longer has what becomes '$expected'" >&2; exit 1; }
done
diff -u "$root/deploy/nginx.conf" "$work/nginx.conf" | sed -n 's/^[-+][^-+]/  &/p' || true
"$nginx" -t -q -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf"
"$nginx" -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf" -g "daemon off;" &
pids+=("$!")
say "nginx on 127.0.0.1:${edge_port} (pid $!), config checked with nginx -t"

EDGE="http://127.0.0.1:${edge_port}" REPLICA_1="127.0.0.1:${port_1}" REPLICA_2="127.0.0.1:${port_2}" KEY="$key" \
    "$python" - <<'PY'
"""The checks, through the balancer; a replica is named by the X-Stockwire-Replica header nginx adds."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time

import httpx
import websockets

EDGE, KEY = os.environ["EDGE"], os.environ["KEY"]
REPLICAS = {os.environ["REPLICA_1"]: "replica-1", os.environ["REPLICA_2"]: "replica-2"}
AUTH = {"Authorization": f"Bearer {KEY}"}
SKU, LOCATION = "FLEET-1", "WH-FLEET"


def fail(message: str) -> None:
    print(f"FAILED: {message}", flush=True)
    sys.exit(1)


def replica(response_headers: httpx.Headers | websockets.Headers) -> str:
    address = response_headers.get("X-Stockwire-Replica", "?")
    return REPLICAS.get(address, f"unknown upstream {address!r}")


async def gql(client: httpx.AsyncClient, base: str, query: str, **variables: object) -> tuple[dict, str]:
    response = await client.post(f"{base}/graphql", json={"query": query, "variables": variables}, headers=AUTH)
    body = response.json()
    if response.status_code != 200 or "errors" in body:
        fail(f"{base}: {response.status_code} {body}")
    return body["data"], replica(response.headers)


async def wait_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 60
    for address, name in REPLICAS.items():
        while True:
            try:
                if (await client.get(f"http://{address}/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                fail(f"{name} is not ready after 60 s")
            await asyncio.sleep(0.2)


async def main() -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await wait_ready(client)

        response = await client.get(f"{EDGE}/readyz")
        print(f"GET /readyz via nginx -> {response.status_code} from {replica(response.headers)}: {response.text}")
        if response.status_code != 200:
            fail("not ready")

        skus = 'mutation { upsertSkus(input: [{code: "FLEET-1", name: "Fleet one"}]) { userErrors { code } } }'
        locations = """mutation { upsertLocations(input: [{code: "WH-FLEET", name: "Fleet warehouse", kind: WAREHOUSE}])
            { userErrors { code } } }"""
        for mutation in (skus, locations):
            data, who = await gql(client, EDGE, mutation)
            print(f"POST /graphql via nginx ({who}): {json.dumps(data)}")

        query = f'query {{ availability(skuCodes: ["{SKU}"]) {{ skuCode available version }} }}'
        response = await client.post(
            f"{EDGE}/graphql", json={"query": query}, headers={**AUTH, "X-Request-Id": "try-fleet-query-1"}
        )
        if response.status_code != 200 or "errors" in response.json():
            fail(f"query: {response.status_code} {response.text}")
        print(f"GraphQL query via nginx ({replica(response.headers)}): {json.dumps(response.json()['data'])}")
        echoed = response.headers.get("X-Request-Id")
        print(f"    the caller's X-Request-Id came back through nginx: {echoed}")
        if echoed != "try-fleet-query-1":
            fail("the request id was not passed through")

        subscription = f'subscription {{ availabilityChanged(skuCodes: ["{SKU}"]) {{ skuCode available version }} }}'
        ws_url = EDGE.replace("http://", "ws://") + "/graphql"
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            holder = replica(ws.response.headers)
            print(f"websocket via nginx -> 101, subprotocol {ws.subprotocol}, held by {holder}")
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {KEY}"}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if ack["type"] != "connection_ack":
                fail(f"no connection_ack: {ack}")
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": subscription}}))
            await asyncio.sleep(1.0)  # the subscription is registered on its replica

            other = next(address for address, name in REPLICAS.items() if name != holder)
            record = """mutation($input: [InventoryEventInput!]!) { recordInventoryEvents(input: $input) {
                results { status version } userErrors { code } } }"""
            event = {
                "source": "try-fleet",
                "externalId": f"try-fleet-{time.time_ns()}",
                "type": "RECEIVED",
                "skuCode": SKU,
                "locationCode": LOCATION,
                "quantity": 7,
                "occurredAt": "2026-01-01T00:00:00Z",
            }
            data, _ = await gql(client, f"http://{other}", record, input=[event])
            print(f"RECEIVED 7 x {SKU} recorded directly on {REPLICAS[other]}: {json.dumps(data)}")
            started = time.monotonic()
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if message["type"] != "next":
                    fail(f"unexpected message {message}")
                figure = message["payload"]["data"]["availabilityChanged"]
                if figure["available"] == 7:
                    break
            print(
                f"subscription on {holder} received {json.dumps(figure)} "
                f"{(time.monotonic() - started) * 1000:.0f} ms after the change on {REPLICAS[other]}"
            )

            seen: dict[str, str] = {}
            for _ in range(20):  # least_conn: with no other load, consecutive requests alternate
                response = await client.get(f"{EDGE}/metrics")
                if response.status_code != 200:
                    fail(f"/metrics {response.status_code}")
                seen.setdefault(replica(response.headers), response.text)
                if set(seen) == set(REPLICAS.values()):
                    break
            if set(seen) != set(REPLICAS.values()):
                fail(f"/metrics via nginx reached only {sorted(seen)}")
            wanted = re.compile(
                r"^stockwire_(subscribers|broadcast_up|messages_delivered|publication_leader|db_pool_checked_out)\b"
                r"|^stockwire_graphql_operations_total\{.*recordInventoryEvents"
            )
            for name in sorted(seen):
                lines = [line for line in seen[name].splitlines() if wanted.search(line)]
                print(f"GET /metrics via nginx from {name}:")
                for line in lines:
                    print(f"    {line}")
    print("fleet tried: OK")


asyncio.run(main())
PY
