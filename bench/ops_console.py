"""How fast /ops opens with 10,000 SKUs x 20 locations (200,000 positions) on PostgreSQL.

    .venv/bin/python bench/ops_console.py [--skus 10000] [--locations 20]

Makes a scratch database, fills it with SQL (positions with version 1, as events would leave them),
starts one server, and in headless Chromium (tests/ops_browser.py) signs in and times: the first grid
page (50 SKUs x 20 locations, live), the next page, a search, and one SKU's page. Drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from playwright.sync_api import expect
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.db.engine import Database
from app.db.migrate import upgrade
from app.security.scopes import Scope
from tests.conftest import create_test_key
from tests.live import start_server, stop_server
from tests.ops_browser import chromium
from tests.services import POSTGRES_ADMIN_URL


async def fill(url: str, sku_count: int, location_count: int) -> None:
    db = Database(url)
    try:
        await upgrade(db.engine)
    finally:
        await db.dispose()
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute(
            """INSERT INTO locations (code, name, kind, priority, active, created_at, updated_at)
               SELECT 'LOC-' || lpad(i::text, 2, '0'), 'Location ' || i, 'WAREHOUSE', 100, true, now(), now()
               FROM generate_series(1, $1) i""",
            location_count,
        )
        await conn.execute(
            """INSERT INTO skus (code, name, active, version, created_at, updated_at)
               SELECT 'SKU-' || lpad(i::text, 6, '0'), 'Product ' || i || ' size ' || (i % 5), true, 1, now(), now()
               FROM generate_series(1, $1) i""",
            sku_count,
        )
        await conn.execute(
            """INSERT INTO stock_levels (sku_id, location_id, on_hand, committed, reserved, unavailable,
                                         safety_stock, incoming, version, updated_at)
               SELECT s.id, l.id, (s.id * 7 + l.id * 3) % 50, (s.id + l.id) % 3, 0, 0, 0, 0, 1, now()
               FROM skus s CROSS JOIN locations l"""
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def measure(url: str, rounds: int) -> dict[str, list[float]]:
    key = asyncio.run(create_test_key(url, frozenset({Scope.ADMIN})))
    server = start_server(url)
    times: dict[str, list[float]] = {"first page": [], "next page": [], "search": [], "sku page": []}
    try:
        with chromium() as browser:
            page = browser.new_page()
            for _ in range(rounds):
                page.goto(f"{server.url}/ops")
                page.evaluate("k => sessionStorage.setItem('stockwire.operatorKey', k)", key)
                started = time.perf_counter()
                page.reload()  # a fresh load, signed in: what an operator opens
                try:
                    page.locator("#grid[data-state=ready] td.cell").first.wait_for(timeout=10_000)
                except Exception:
                    print(
                        "page says:",
                        page.locator("#error").text_content(),
                        page.locator("#signin-error").text_content(),
                    )
                    raise
                page.locator("#live.on").wait_for()
                times["first page"].append(time.perf_counter() - started)
                cells = page.locator("#grid td.cell").count()
                assert cells == 50 * 20, cells

                started = time.perf_counter()
                page.click("#next")
                expect(page.locator("#page-label")).to_have_text("page 2")
                page.locator("#grid[data-state=ready]").wait_for()
                times["next page"].append(time.perf_counter() - started)

                started = time.perf_counter()
                page.fill("#search", "SKU-00990")  # SKU-009900 to SKU-009909
                expect(page.locator("#grid[data-state=ready] tbody tr")).to_have_count(10)
                times["search"].append(time.perf_counter() - started - 0.3)  # less the typing debounce

                started = time.perf_counter()
                page.click('a[href="#/sku/SKU-009901"]')
                page.locator("#sku-levels tbody tr").nth(19).wait_for()
                page.locator("#ledger tbody tr").first.wait_for()
                times["sku page"].append(time.perf_counter() - started)
                page.goto(f"{server.url}/ops#/grid")
                page.fill("#search", "")
    finally:
        stop_server(server)
    return times


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--locations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    name = f"stockwire_bench_ops_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    url_text = url.render_as_string(hide_password=False)
    try:
        started = time.perf_counter()
        asyncio.run(fill(url_text, args.skus, args.locations))
        print(f"{args.skus} SKUs x {args.locations} locations filled in {time.perf_counter() - started:.1f} s")
        for what, seconds in measure(url_text, args.rounds).items():
            ms = sorted(s * 1000 for s in seconds)
            print(f"{what:>10}: median {statistics.median(ms):6.0f} ms, max {ms[-1]:6.0f} ms ({len(ms)} rounds)")
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
