"""Fixtures: the app over HTTP on SQLite and on PostgreSQL, and direct database access for assertions."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import Database
from app.db.migrate import upgrade
from app.db.tables import metadata
from app.main import create_app
from app.security import keys
from app.security.scopes import ALL_SCOPES, Scope
from app.services.context import Ctx
from app.settings import Settings
from tests.services import POSTGRES_ADMIN_URL, require_postgres

# Many apps start and stop in one test process: freezing each one's heap out of garbage collection
# (what a server does once at start, app/main.py _tune_gc) would keep every earlier test's cycles.
# Servers the tests start inherit this too; tests/test_gc_tuning.py covers the tuning itself.
os.environ.setdefault("STOCKWIRE_GC_THRESHOLD", "0")

# every table the migrations make (each issue adds its own), emptied between Postgres tests
TABLES = ", ".join(t.name for t in metadata.sorted_tables)


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
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
def postgres_url() -> Iterator[str]:
    """A fresh database for this test run, migrated once; dropped at the end."""
    require_postgres()
    given = os.environ.get("STOCKWIRE_TEST_POSTGRES_URL")
    if given:
        asyncio.run(_migrate(given))
        yield given
        return
    name = f"stockwire_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = _async_url(str(make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)))
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; every test gets a copy (much faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "stockwire.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "stockwire.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(_truncate(url))
    return url


async def _truncate(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
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


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    settings = Settings(database_url=database_url, broadcast_url="memory://")
    key = await create_test_key(database_url)  # before the lifespan: Postgres refuses to start without one
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, runtime.ctx, key)
