"""Fixtures: the app over HTTP on PostgreSQL, and direct database access for assertions.

PostgreSQL is the server at STOCKWIRE_TEST_POSTGRES_ADMIN_URL (default 127.0.0.1:5432) when it answers (CI),
else an embedded one (app/db/embedded.py) this run starts in a temp directory, so a laptop needs nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.embedded import EmbeddedPostgres
from app.db.engine import Database
from app.db.migrate import upgrade
from app.db.tables import metadata
from app.main import Runtime, create_app
from app.security import keys
from app.security.scopes import ALL_SCOPES, Scope
from app.services.context import Ctx
from app.settings import Settings
from tests.services import POSTGRES_ADMIN_URL, postgres_server_answers, require_postgres

T = TypeVar("T")

# Many apps start and stop in one test process: freezing each one's heap out of garbage collection
# (what a server does once at start, app/main.py _tune_gc) would keep every earlier test's cycles.
# Servers the tests start inherit this too; tests/test_gc_tuning.py covers the tuning itself.
os.environ.setdefault("STOCKWIRE_GC_THRESHOLD", "0")

# every table the migrations make (each issue adds its own), emptied between tests
TABLES = ", ".join(t.name for t in metadata.sorted_tables)


def _blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end from sync code, also when called inside a running event loop (async fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def _url(admin_url: str, database: str) -> str:
    """SQLAlchemy URL of `database` on the admin URL's server (TCP or a Unix socket: ?host=/dir)."""
    url = make_url(admin_url).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def _admin(admin_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await upgrade(db.engine)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """The run's PostgreSQL server (a libpq URI of its maintenance database)."""
    if postgres_server_answers():
        yield POSTGRES_ADMIN_URL
        return
    require_postgres()  # fails on CI, where the service must be up; passes where the embedded one installs
    # not under pytest's basetemp: pytest makes its root 0700 again at every session start, and as root the
    # server runs as another user (pitfalls.md #11), which must be able to reach its data directory
    data_dir = Path(tempfile.mkdtemp(prefix="stockwire-test-pg-"))
    try:
        with EmbeddedPostgres(data_dir) as server:
            server.start()
            # what the clients' tests make their databases with (clients/testing/database.py), in this
            # process and in the Node and server processes they start
            os.environ["STOCKWIRE_TEST_POSTGRES_ADMIN_URL"] = server.admin_uri
            yield server.admin_uri
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database for this test run, migrated once; dropped at the end."""
    given = os.environ.get("STOCKWIRE_TEST_POSTGRES_URL")
    if given:
        asyncio.run(_migrate(given))
        yield given
        return
    name = f"stockwire_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(postgres_admin_url, f'CREATE DATABASE "{name}"'))
    url = _url(postgres_admin_url, name)
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(_admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def new_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Makes a database of its own, migrated (a copy of one migrated template), for what must not share
    the per-test one: a live server kept for a module, a CLI run in another process, property examples.
    All are dropped at the end of the run."""
    run = f"stockwire_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    template = f"{run}_template"
    asyncio.run(_admin(postgres_admin_url, f'CREATE DATABASE "{template}"'))
    made = [template]
    asyncio.run(_migrate(_url(postgres_admin_url, template)))

    def make() -> str:
        name = f"{run}_{len(made)}"
        _blocking(_admin(postgres_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        made.append(name)
        return _url(postgres_admin_url, name)

    try:
        yield make
    finally:
        asyncio.run(_admin(postgres_admin_url, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in made)))


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """The run's database, emptied for this test."""
    asyncio.run(_truncate(postgres_url))
    return postgres_url


async def _truncate(url: str) -> None:
    db = Database(url, role=None)  # as the login: TRUNCATE is no right of the application's role
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
            # the default tenant (id 1) every single-tenant test works in, as migration 0011 made it
            await conn.execute(text("INSERT INTO tenants (code, name) VALUES ('default', 'Default tenant')"))
    finally:
        await db.dispose()


class Api:
    """Calls /graphql over HTTP like a client would; `ok` fails the test on GraphQL errors.

    Sends `key` (the fixture's: every scope) as a bearer token; `as_key` gives the same app with another.
    """

    def __init__(self, client: httpx.AsyncClient, ctx: Ctx, key: str | None = None) -> None:
        self.client = client
        self.ctx = ctx
        self.key = key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def as_key(self, key: str | None) -> Api:
        return Api(self.client, self.ctx, key)

    async def new_key(self, *scopes: Scope, name: str = "test") -> str:
        """A key with these scopes, made through the service (as `stockwire keys create` would)."""
        return (await keys.create_key(self.ctx.db, name, scopes)).secret

    async def raw(self, query: str, **variables: Any) -> httpx.Response:
        return await self.client.post("/graphql", json={"query": query, "variables": variables}, headers=self.headers)

    async def ok(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.raw(query, **variables)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.ctx.db.read() as conn:
            return list(await conn.execute(text(statement), params))


async def create_test_key(database_url: str, scopes: frozenset[Scope] = ALL_SCOPES) -> str:
    """A key with these scopes (default: all) in that database, made before any server starts."""
    db = Database(database_url)
    try:
        return (await keys.create_key(db, "tests (every scope)", scopes)).secret
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def served(database_url: str, **settings: Any) -> AsyncIterator[tuple[Api, Runtime]]:
    """The app on `database_url` with these settings (memory:// unless given), started, with a client and
    a key of every scope; and its runtime."""
    key = await create_test_key(database_url)  # before the lifespan: Postgres refuses to start without one
    app = create_app(Settings(database_url=database_url, **{"broadcast_url": "memory://", **settings}))
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        assert runtime.ctx is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, runtime.ctx, key), runtime


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    # two connections opened at start, not the served default's 20 (Database.warm): this app lives for
    # one test and a few requests, and 20 backends forked per test cost the suite about 50 ms each
    async with served(database_url, db_pool_warm=2) as (made, _):
        yield made


@pytest.fixture(scope="module")
def client_database(postgres_admin_url: str) -> Iterator[dict[str, Any]]:
    """A database of its own with a key per scope, made the way the Node tests make theirs
    (clients/testing/database.py), on the run's server: 127.0.0.1:5432 or the embedded one."""
    from clients.testing.database import create, drop

    made = asyncio.run(create())
    try:
        yield made
    finally:
        asyncio.run(drop(made["name"]))
