"""CPU of an ingested batch's locked section: the Python a batch runs while it holds its positions' row locks.

    .venv/bin/python bench/locked_section.py [--batches 25] [--batch 500] [--keep-db]

On demand only (not part of the test suite). bench/ingest.py's batches queue on each other's row locks
(bench/README.md, "ingest.py"), so the Python between a batch's lock statement and its write is on
everyone's path. This measures it alone: the service's own `events.record_events`, in this process, one
batch at a time (no other request, no event-loop lag), on ingest.py's catalogue (1 location, 10,000
SKUs) and batches (`ingest.Feed`: the same mix, re-sends and late counts), as the default tenant.
Every statement goes through `app.db.pg.run`; it is wrapped to note the process CPU time when a
statement is sent and when its answer is back, and the locked section's Python is the CPU from the
lock statement's answer to the write's sending (the write's arrays built, encoded, included).

Prints, over the batches after the first five: the 20th percentile (the machine's noise is one-sided),
median and minimum of that CPU, and of the whole `record_events` call. To compare two commits, copy
this file into a worktree of the other and run both, alternated. The database
(`stockwire_bench_locked_<pid>`) is dropped at the end unless --keep-db.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import drop_database, migrate, recreate_database, run_bench, run_database, sa_url, say
from ingest import Feed, domain_event
from reserve import db_exec, load_catalogue

from app.db import pg, tenancy
from app.db.engine import Database
from app.services import events
from app.services.context import Ctx
from app.settings import Settings

LOCK = "WITH locked AS"  # pg._LOCK_SIZED: the lock statement (with the sizes and counts it reads)
WRITE = "WITH changed AS"  # pg._WRITE_BATCH: positions, ledger, outbox and demand in one statement


async def main(a: argparse.Namespace) -> int:
    marks: list[tuple[str, str, float]] = []
    run = pg.run

    async def noted(call: Any, sql: str, *args: Any) -> Any:
        marks.append(("sent", sql, time.process_time()))
        try:
            return await run(call, sql, *args)
        finally:
            marks.append(("back", sql, time.process_time()))

    say(f"re-creating database {a.db}")
    await recreate_database(a.db)
    db: Database | None = None
    try:
        await asyncio.to_thread(migrate, a.db)
        say("loading ingest.py's catalogue (1 location, 10,000 SKUs)")
        await load_catalogue(a.db)
        await db_exec(a.db, "VACUUM ANALYZE")
        settings = Settings(database_url=sa_url(a.db))
        db = Database(settings.database, 2, 0)
        ctx = Ctx(db=db, settings=settings)
        feed = Feed(f"locked-{a.db[-6:]}", a.batch)
        pg.run = noted  # type: ignore[assignment]
        locked: list[float] = []
        whole: list[float] = []
        say(f"{a.batches} batches of {a.batch}, one at a time")
        for n in range(a.batches):
            batch = [domain_event(e) for e in feed.next_batch()]
            marks.clear()
            start = time.process_time()
            with tenancy.acting_for(1):
                await events.record_events(ctx, batch)
            spent = time.process_time() - start
            lock_back = [t for kind, sql, t in marks if kind == "back" and sql.startswith(LOCK)]
            write_sent = [t for kind, sql, t in marks if kind == "sent" and sql.startswith(WRITE)]
            if len(lock_back) != 1 or len(write_sent) != 1:
                raise SystemExit(
                    f"batch {n}: {len(lock_back)} lock statements and {len(write_sent)} writes, not one each"
                )
            if n >= 5:  # the first ones plan the statements and warm the caches
                locked.append((write_sent[0] - lock_back[0]) * 1000)
                whole.append(spent * 1000)
        for label, values in (("locked section's Python", locked), ("whole record_events", whole)):
            ordered = sorted(values)
            print(
                f"{label:24s} CPU per batch: p20 {ordered[len(ordered) // 5]:6.2f} ms, median "
                f"{statistics.median(ordered):6.2f} ms, min {ordered[0]:6.2f} ms ({len(ordered)} batches)"
            )
        return 0
    finally:
        pg.run = run  # type: ignore[assignment]
        if db is not None:
            await db.engine.dispose()
        if not a.keep_db:
            await drop_database(a.db)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=25, help="batches to run (the first five are not counted)")
    p.add_argument("--batch", type=int, default=500, help="events per batch (default 500)")
    p.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    args = p.parse_args()
    args.db = run_database("locked")
    run_bench(main(args))
