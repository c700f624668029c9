"""Keys from the command line (`stockwire keys create|list|revoke`), stored hashed, and the start-up
rule: the embedded default (`stockwire serve` without STOCKWIRE_DATABASE_URL, settings.development_key)
makes and prints a development admin key when it has none; a deployment refuses to start until
`stockwire keys create` has made one."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner, Result

from app.cli import cli
from app.db.engine import Database
from app.main import create_app
from app.security import keys
from app.security.runtime import NoApiKeyError
from app.security.scopes import Scope
from app.settings import Settings

QUERY = {"query": 'query { availability(skuCodes: ["SKU-1"]) { available } }'}
STOCKWIRE = Path(sys.executable).parent / "stockwire"


class _Cli:
    """The `stockwire` command in-process; in a thread, as it runs its own event loop (asyncio.run)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def invoke(self, args: list[str]) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, cli, args, env=self.env)


async def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    db = Database(url)
    try:
        async with db.read() as conn:
            return [tuple(row) for row in await conn.execute(text(sql))]
    finally:
        await db.dispose()


async def _status(url: str, key: str, query: dict[str, str] = QUERY) -> int:
    # as the embedded default: it starts (making a key of its own) even when the last key was revoked
    app = create_app(Settings(database_url=url, development_key=True))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/graphql", json=query, headers={"Authorization": f"Bearer {key}"})
            return response.status_code


def test_keys_create_prints_the_key_as_its_last_line_and_stores_only_its_hash(
    tmp_path: Path, new_database: Callable[[], str]
) -> None:
    url = new_database()
    env = {**os.environ, "STOCKWIRE_DATABASE_URL": url}
    done = subprocess.run(
        [str(STOCKWIRE), "keys", "create", "--scopes", "admin,checkout"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert keys.prefix_of(secret) is not None
    assert "admin,checkout" in done.stdout

    rows = asyncio.run(_rows(url, "SELECT * FROM api_keys"))
    assert len(rows) == 1
    assert secret not in str(rows)
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]


async def test_a_cli_key_works_until_it_is_revoked(tmp_path: Path, new_database: Callable[[], str]) -> None:
    url = new_database()
    env = {"STOCKWIRE_DATABASE_URL": url}
    runner = _Cli(env)
    made = await runner.invoke(["keys", "create", "--scopes", "storefront", "--name", "web shop"])
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert await _status(url, secret) == 200

    listed = await runner.invoke(["keys", "list"])
    prefix = keys.prefix_of(secret)
    assert prefix is not None
    assert prefix in listed.output and "storefront" in listed.output and "web shop" in listed.output
    assert secret not in listed.output

    revoked = await runner.invoke(["keys", "revoke", prefix])
    assert revoked.exit_code == 0 and f"revoked {prefix}" in revoked.output
    assert (await runner.invoke(["keys", "list"])).output.strip() == "no keys"
    assert prefix in (await runner.invoke(["keys", "list", "--all"])).output
    assert await _status(url, secret) == 401


def test_keys_create_refuses_unknown_or_no_scopes(tmp_path: Path, new_database: Callable[[], str]) -> None:
    url = new_database()
    runner = CliRunner()
    env = {"STOCKWIRE_DATABASE_URL": url}
    unknown = runner.invoke(cli, ["keys", "create", "--scopes", "admin,root"], env=env)
    assert unknown.exit_code == 2 and "unknown scope(s): root" in unknown.output
    empty = runner.invoke(cli, ["keys", "create", "--scopes", " , "], env=env)
    assert empty.exit_code == 2 and "at least one scope" in empty.output
    missing = runner.invoke(cli, ["keys", "revoke", "nope"], env=env)
    assert missing.exit_code == 1
    assert runner.invoke(cli, ["keys", "list", "--all"], env=env).output.strip() == "no keys"


async def test_the_embedded_default_without_a_key_makes_and_prints_a_development_admin_key(
    tmp_path: Path, new_database: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = new_database()
    app = create_app(Settings(database_url=url, development_key=True))
    async with app.router.lifespan_context(app):
        printed = capsys.readouterr().err
        secret = next(word for word in printed.split() if keys.prefix_of(word))
        found = await keys.list_keys(app.state.runtime.ctx.db)
        assert [k.name for k in found] == ["development key (created at start)"]
        assert {s.value for s in found[0].scopes} == {"storefront", "checkout", "router", "integration", "admin"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/graphql", json=QUERY, headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 200
    # the next start has a key, so it makes none and prints none
    app = create_app(Settings(database_url=url, development_key=True))
    async with app.router.lifespan_context(app):
        assert "development key" not in capsys.readouterr().err
        assert len(await keys.list_keys(app.state.runtime.ctx.db)) == 1


async def test_the_embedded_default_with_only_revoked_keys_makes_a_new_one(
    tmp_path: Path, new_database: Callable[[], str]
) -> None:
    url = new_database()
    db = Database(url)
    try:
        old = await keys.create_key(db, "old", [Scope.ADMIN])
        await keys.revoke_key(db, old.key.id)
    finally:
        await db.dispose()
    app = create_app(Settings(database_url=url, development_key=True))
    async with app.router.lifespan_context(app):
        active = await keys.list_keys(app.state.runtime.ctx.db, include_revoked=False)
        assert [k.name for k in active] == ["development key (created at start)"]


@pytest.mark.postgres
async def test_postgres_refuses_to_start_until_a_key_is_created(postgres_url: str) -> None:
    from tests.conftest import _truncate

    await _truncate(postgres_url)
    app = create_app(Settings(database_url=postgres_url))
    with pytest.raises(NoApiKeyError, match="stockwire keys create"):
        async with app.router.lifespan_context(app):
            pass
    db = Database(postgres_url)
    try:
        assert await keys.list_keys(db) == []  # it made none of its own
    finally:
        await db.dispose()

    made = await _Cli({"STOCKWIRE_DATABASE_URL": postgres_url}).invoke(["keys", "create", "--scopes", "admin"])
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert await _status(postgres_url, secret, {"query": "query { apiKeys { prefix } }"}) == 200


@pytest.mark.postgres
@pytest.mark.slow
def test_stockwire_serve_on_postgres_without_a_key_exits_with_the_reason(postgres_url: str) -> None:
    from tests.conftest import _truncate
    from tests.live import free_port

    asyncio.run(_truncate(postgres_url))
    env = {**os.environ, "STOCKWIRE_DATABASE_URL": postgres_url}
    done = subprocess.run(
        [str(STOCKWIRE), "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "no active API key" in done.stderr and "stockwire keys create" in done.stderr
