"""A fresh, migrated PostgreSQL database with API keys, for a live server; and dropping it again.

    python clients/testing/database.py create   # prints {"name", "url", "keys": {scope: key, "all": key}} as JSON
    python clients/testing/database.py drop NAME
    python clients/testing/database.py lock URL SKU   # holds SKU's position rows locked until stdin closes

The Node tests (clients/ts/test) call this, so both test suites make databases the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.db.engine import Database
from app.db.migrate import upgrade
from app.security import keys
from app.security.scopes import ALL_SCOPES, Scope

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """Read when used, not at import: the test suite points it at the embedded PostgreSQL it started when
    nothing answers on 5432 (tests/conftest.py postgres_admin_url)."""
    return os.environ.get("STOCKWIRE_TEST_POSTGRES_ADMIN_URL", DEFAULT_ADMIN_URL)


def _url(name: str) -> str:
    """The SQLAlchemy URL of `name` on the same server (TCP, or a Unix socket given as ?host=/dir)."""
    from sqlalchemy.engine import make_url

    url = make_url(admin_url()).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create() -> dict[str, object]:
    """A new database, migrated, with one key per scope and one with every scope."""
    name = f"stockwire_clients_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = _url(name)
    db = Database(url)
    try:
        await upgrade(db.engine)
        made = {"all": (await keys.create_key(db, "client tests (every scope)", ALL_SCOPES)).secret}
        for scope in Scope:
            made[scope.value] = (await keys.create_key(db, f"client tests ({scope.value})", {scope})).secret
    except BaseException:
        await db.dispose()
        await drop(name)
        raise
    await db.dispose()
    return {"name": name, "url": url, "keys": made}


async def drop(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_WAITING_FOR_ME = "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"


async def lock(url: str, sku: str) -> None:
    """Hold the row lock of every position of `sku` (what a long transaction on them does): prints
    "locked" once held. Then, line by line on standard input: "wait" answers "waited" once another
    backend waits for these locks (a request that needs them, holding a connection of its server's
    pool meanwhile); "commit", or the end of the input, gives them back."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with conn.transaction():
            held = await conn.fetch(
                "SELECT 1 FROM stock_levels l JOIN skus s ON s.id = l.sku_id WHERE s.code = $1 FOR UPDATE", sku
            )
            if not held:
                sys.exit(f"no position of {sku} to lock")
            print("locked", flush=True)
            while (line := (await asyncio.to_thread(sys.stdin.readline)).strip()) not in ("", "commit"):
                if line == "wait":
                    while not await conn.fetchval(_WAITING_FOR_ME):  # noqa: ASYNC110 (another backend: poll)
                        await asyncio.sleep(0.02)
                    print("waited", flush=True)
    finally:
        await conn.close()


def main() -> None:
    if sys.argv[1:2] == ["create"]:
        print(json.dumps(asyncio.run(create())))
    elif sys.argv[1:2] == ["drop"] and len(sys.argv) == 3:
        asyncio.run(drop(sys.argv[2]))
    elif sys.argv[1:2] == ["lock"] and len(sys.argv) == 4:
        asyncio.run(lock(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
