"""Tenants isolated by PostgreSQL itself (issue 14): the schema, raw SQL as the application's role,
keys and the tenant a request names, per-tenant limits, and a shared site's capacity."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app.db import tenancy
from app.db.engine import Database
from app.db.tables import metadata
from app.security import keys
from app.security.scopes import ALL_SCOPES, Scope
from app.services import tenants
from tests.conftest import Api
from tests.helpers import RESERVE, catalogue, receive

pytestmark = pytest.mark.postgres

# not tenant data: README "Tenants" says why each is global
GLOBAL_TABLES = {"tenants", "sites", "site_daily_orders"}


async def make_tenant(url: str, code: str) -> int:
    db = Database(url, role=None)  # the application's role cannot make tenants
    try:
        return (await tenants.create_tenant(db, code, f"Brand {code}")).id
    finally:
        await db.dispose()


async def key_of(db: Database, tenant_id: int, *scopes: Scope, acts_for: tuple[str, ...] = ()) -> str:
    with tenancy.acting_for(tenant_id):
        return (await keys.create_key(db, f"key of {tenant_id}", scopes or ALL_SCOPES, acts_for=acts_for)).secret


def raw_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- the schema ------------------------------------------------------------------------------------


async def test_every_tenant_table_is_forced_under_a_tenant_policy_with_the_tenant_first_in_every_key(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(raw_dsn(database_url))
    try:
        tables = {t.name for t in metadata.sorted_tables}
        rls = {
            r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"])
            for r in await conn.fetch(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            )
        }
        policies = {
            r["tablename"]: r["qual"]
            for r in await conn.fetch("SELECT tablename, qual FROM pg_policies WHERE policyname = 'tenant_isolation'")
        }
        # every key (primary, unique, foreign) and unique index starts with tenant_id
        keys_ = await conn.fetch(
            "SELECT c.conrelid::regclass::text AS tbl, c.conname, c.confrelid::regclass::text AS referred, "
            "(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1]) AS first "
            "FROM pg_constraint c WHERE c.contype IN ('p', 'u', 'f') AND c.connamespace = 'public'::regnamespace"
        )
        unique_indexes = await conn.fetch(
            "SELECT i.indrelid::regclass::text AS tbl, i.indexrelid::regclass::text AS name, "
            "(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]) AS first "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "WHERE i.indisunique AND c.relnamespace = 'public'::regnamespace"
        )
    finally:
        await conn.close()
    tenant_tables = tables - GLOBAL_TABLES
    assert len(tenant_tables) >= 26
    for table in sorted(tenant_tables):
        assert rls[table] == (True, True), table
        assert "tenant_id" in (policies.get(table) or ""), table
    # the migration's own table is the one public table outside the metadata
    assert set(rls) - tables == {"alembic_version"}
    for row in [*keys_, *unique_indexes]:
        # a key to a reference table (a shared site) needs no tenant: that table is on every node
        if row["tbl"] in tenant_tables and row.get("referred") not in GLOBAL_TABLES:
            pointing_at_tenants = row["first"] == "tenant_id"
            assert pointing_at_tenants, (
                f"{row['tbl']}: {row.get('conname') or row.get('name')} starts with {row['first']}"
            )


# --- raw SQL as the application's role --------------------------------------------------------------


async def test_raw_sql_as_the_application_role_sees_only_the_current_tenants_rows(database_url: str) -> None:
    b = await make_tenant(database_url, "brand-b")
    db = Database(database_url)  # every pooled connection is stockwire_app (SET ROLE)

    async def add(conn: Any) -> None:
        await conn.execute(
            text(
                "INSERT INTO skus (code, name, active, version, created_at, updated_at) VALUES "
                "('TEE-M', :name, true, 1, now(), now())"
            ),
            {"name": f"tee of {tenancy.current()}"},
        )

    try:
        for tenant in (tenancy.DEFAULT_TENANT, b):
            with tenancy.acting_for(tenant):
                await db.write(add)  # the same code in both tenants: unique per tenant only
        for tenant in (tenancy.DEFAULT_TENANT, b):
            with tenancy.acting_for(tenant):
                async with db.read() as conn:
                    assert (await conn.execute(text("SELECT current_user"))).scalar_one() == tenancy.APP_ROLE
                    # no WHERE on the tenant: the database adds it
                    rows = (await conn.execute(text("SELECT name, tenant_id FROM skus"))).all()
                    assert rows == [(f"tee of {tenant}", tenant)]
                    assert (
                        await conn.execute(text("SELECT count(*) FROM skus WHERE tenant_id <> :t"), {"t": tenant})
                    ).scalar_one() == 0
        with tenancy.acting_for(None):
            async with db.read() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM skus"))).scalar_one() == 0
        # a row for another tenant cannot be written, even naming it
        with tenancy.acting_for(b), pytest.raises(DBAPIError, match="row-level security"):
            async with db.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO skus (tenant_id, code, name, active, version, created_at, updated_at) "
                        "VALUES (1, 'SNEAKY', 'x', true, 1, now(), now())"
                    )
                )
        # nor moved there
        with tenancy.acting_for(b):
            async with db.begin() as conn:
                with pytest.raises(DBAPIError, match="row-level security"):
                    await conn.execute(text("UPDATE skus SET tenant_id = 1"))
    finally:
        await db.dispose()

    # a plain session of the role: no tenant set, nothing seen; a transaction-local tenant ends with it
    conn = await asyncpg.connect(raw_dsn(database_url))
    try:
        await conn.execute(f"SET ROLE {tenancy.APP_ROLE}")
        assert await conn.fetchval("SELECT count(*) FROM skus") == 0
        async with conn.transaction():
            await conn.execute(f"SELECT set_config('stockwire.tenant_id', '{b}', true)")
            assert await conn.fetchval("SELECT name FROM skus") == f"tee of {b}"
        assert await conn.fetchval("SELECT count(*) FROM skus") == 0  # the next transaction of the pooled session
        assert await conn.fetchval("SELECT count(*) FROM tenants") == 2  # tenants themselves are no secret
    finally:
        await conn.close()


# --- keys and the tenant a request names ------------------------------------------------------------

WHO = "query { skus { nodes { code name } } }"


async def test_a_key_acts_for_its_tenant_and_an_operator_key_must_name_one(api: Api, database_url: str) -> None:
    b = await make_tenant(database_url, "brand-b")
    await make_tenant(database_url, "brand-c")
    db = api.ctx.db
    await api.ok('mutation { upsertSkus(input: [{code: "TEE-M", name: "default tee"}]) { userErrors { code } } }')
    b_key = await key_of(db, b)
    await api.as_key(b_key).ok(
        'mutation { upsertSkus(input: [{code: "TEE-M", name: "brand-b tee"}]) { userErrors { code } } }'
    )

    assert (await api.ok(WHO))["skus"]["nodes"] == [{"code": "TEE-M", "name": "default tee"}]
    assert (await api.as_key(b_key).ok(WHO))["skus"]["nodes"] == [{"code": "TEE-M", "name": "brand-b tee"}]
    # a key naming another tenant than its own is refused, before anything runs
    other = await api.client.post(
        "/graphql", json={"query": WHO}, headers={**api.headers, "X-Stockwire-Tenant": "brand-b"}
    )
    assert other.status_code == 403, other.text
    assert other.json()["errors"][0]["extensions"]["code"] == "TENANT_FORBIDDEN"
    same = await api.client.post(
        "/graphql", json={"query": WHO}, headers={**api.headers, "X-Stockwire-Tenant": "default"}
    )
    assert same.status_code == 200 and same.json()["data"]["skus"]["nodes"][0]["name"] == "default tee"

    operator = await key_of(db, tenancy.DEFAULT_TENANT, acts_for=("default", "brand-b"))
    as_operator = {"Authorization": f"Bearer {operator}"}
    missing = await api.client.post("/graphql", json={"query": WHO}, headers=as_operator)
    assert missing.status_code == 400 and missing.json()["errors"][0]["extensions"]["code"] == "TENANT_REQUIRED"
    for tenant, name in (("default", "default tee"), ("brand-b", "brand-b tee")):
        answer = await api.client.post(
            "/graphql", json={"query": WHO}, headers={**as_operator, "X-Stockwire-Tenant": tenant}
        )
        assert answer.json()["data"]["skus"]["nodes"] == [{"code": "TEE-M", "name": name}]
    for refused in ("brand-c", "no-such-tenant"):
        answer = await api.client.post(
            "/graphql", json={"query": WHO}, headers={**as_operator, "X-Stockwire-Tenant": refused}
        )
        assert answer.status_code == 403 and answer.json()["errors"][0]["extensions"]["code"] == "TENANT_FORBIDDEN"
    # keys are tenant data: each tenant's admin lists its own
    listed = (await api.as_key(b_key).ok("query { apiKeys { prefix } }"))["apiKeys"]
    assert [k["prefix"] for k in listed] == [keys.prefix_of(b_key)]


async def test_holds_are_rate_limited_per_tenant_as_well_as_per_key(database_url: str) -> None:
    import httpx

    from app.main import create_app
    from app.settings import Settings

    b = await make_tenant(database_url, "brand-b")
    settings = Settings(
        database_url=database_url, broadcast_url="memory://", hold_rate_limit=100, tenant_hold_rate_limit=3
    )
    setup = Database(database_url)
    try:
        a_keys = [await key_of(setup, tenancy.DEFAULT_TENANT) for _ in range(2)]
        b_key = await key_of(setup, b)
    finally:
        await setup.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            apis = [Api(client, runtime.ctx, k) for k in (*a_keys, b_key)]
            for each in (apis[0], apis[2]):
                await catalogue(each)
                await receive(each, "SKU-1", "WH-1", 100)

            async def hold(api: Api, n: int) -> list[str]:
                data = await api.ok(
                    RESERVE,
                    input={"idempotencyKey": f"k-{n}-{api.key}", "lines": [{"skuCode": "SKU-1", "quantity": 1}]},
                )
                return [e["code"] for e in data["reserve"]["userErrors"]]

            # two keys of the default tenant share its 3 holds; brand-b's key has its own 3
            answers = [await hold(apis[i % 2], i) for i in range(4)]
            assert answers == [[], [], [], ["RATE_LIMITED"]]
            assert [await hold(apis[2], i) for i in range(3)] == [[], [], []]
