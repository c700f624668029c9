"""The fixed CPU cost of one GraphQL request: an authenticated `{ __typename }` (no resolver, no database).

    .venv/bin/python bench/floor.py [--seconds 5] [--clients 16] [--profile sample|cprofile] [--server-cmd CMD]

On demand only (not part of the test suite). Re-creates a database of its own, migrates it, creates a
`checkout` API key, starts `uvicorn app.main:create_app --factory` (one worker) and sends the query over
`--clients` keep-alive connections for `--seconds` after a `--warmup`. Prints requests/s, p50/p99 and the
server's CPU per request: everything a request costs above the service call (HTTP, authentication, the
access log and metrics, GraphQL parse/validate/execute, the answer), the floor under every operation.
The server is stopped in a `finally`; the database is dropped unless `--keep-db`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    RawHttp,
    Result,
    Server,
    Tally,
    cpu_delta,
    cpu_snapshot,
    create_api_key,
    drop_database,
    migrate,
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

BODY = json.dumps({"query": "{ __typename }"}).encode()


async def run(server: Server, seconds: float, clients: int, db: str, profiled: bool = False) -> Result:
    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        client = RawHttp("127.0.0.1", server.port)
        await client.connect()
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                status, data = await client.request("POST", "/graphql", BODY)
                tally.latencies.append(time.perf_counter() - t)
                if status == 200 and json.loads(data).get("data") == {"__typename": "Query"}:
                    tally.ok += 1
                else:
                    tally.fail(f"HTTP {status}: {data[:200]!r}")
        finally:
            await client.close()

    pids = server.pids()
    snap = cpu_snapshot(pids, db)
    if profiled:
        os.kill(server.proc.pid, signal.SIGUSR1)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_delta(snap, cpu_snapshot(pids, db))
    if profiled:
        os.kill(server.proc.pid, signal.SIGUSR2)
    return Result("1 worker", "FLOOR", elapsed, tally, cpu)


async def amain(a: argparse.Namespace) -> int:
    stop_on_sigterm()
    server: Server | None = None
    try:
        say(f"re-creating database {a.db}")
        await recreate_database(a.db)
        await asyncio.to_thread(migrate, a.db)
        set_api_key(await asyncio.to_thread(create_api_key, a.db, "checkout"))
        argv = None
        if a.profile:
            argv = [PYTHON, str(ROOT / "bench" / "_profiled_server.py"), "--port", "{port}"]
            argv += ["--out", a.profile_out, "--mode", a.profile]
        elif a.server_cmd:
            argv = shlex.split(a.server_cmd)  # A/B of a change, as bench/reserve.py --server-cmd
        server = start_server(a.db, argv=argv)
        await wait_ready(server)
        say(f"warm-up {a.warmup:g}s")
        await run(server, a.warmup, a.clients, a.db)
        say(f"measuring {a.seconds:g}s with {a.clients} clients: {{ __typename }}, authenticated")
        r = await run(server, a.seconds, a.clients, a.db, profiled=bool(a.profile))
        print(
            f"{{ __typename }}: {r.rate:.0f} requests/s, p50 {r.pct(0.5):.1f} ms, p99 {r.pct(0.99):.1f} ms, "
            f"failures {r.tally.failed}"
        )
        print("  " + r.cpu_line().replace("CPU per reserve", "CPU per request"))
        for s in r.tally.failure_samples:
            print(f"  failure: {s}")
        if a.profile:
            await asyncio.sleep(1.0)  # the server writes the profile on SIGUSR2; a half-written .prof fails to load
            print_profile(a.profile, a.profile_out, ["FLOOR"])
        return 0 if r.tally.ok and not r.tally.failed else 1
    finally:
        if server is not None:
            server.stop()
            server.discard_log()
        if not a.keep_db:
            await drop_database(a.db)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--db", default=run_database("floor"))
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--profile", choices=("sample", "cprofile"))
    p.add_argument("--profile-out", default="/tmp/stockwire-floor-profile")
    p.add_argument(
        "--server-cmd",
        help="measure this server command instead of uvicorn (A/B of a change); `{port}` is replaced",
    )
    run_bench(amain(p.parse_args()))


if __name__ == "__main__":
    main()
