"""Tenants: a tenant on every table, isolated by PostgreSQL's row-level security

* `tenants` (the default tenant, id 1 code "default", receives every existing row), `sites` (physical
  places several tenants share, a reference table) and `site_daily_orders` (a shared site's orders per
  day, counted for the site as a whole); `locations.site_id`; `api_keys.acts_for` (operator keys).
* `tenant_id` on every tenant table (TENANT_TABLES), filled from the transaction's
  `stockwire.tenant_id` setting (a session that never set one writes into the default tenant), and
  first in every primary, unique and foreign key: SKU codes are unique per tenant, a row can only
  point at rows of its own tenant, and every table could be distributed by tenant (README, Tenants).
* Row-level security ENABLEd and FORCEd on every tenant table: role `stockwire_app` sees and writes
  only the rows of the transaction's tenant (none when no tenant is set); role `stockwire_system`
  (cross-tenant background work) may only claim outbox rows and find API keys by prefix. Both roles
  are created here (NOLOGIN) with the grants they need; the service switches every pooled connection
  to `stockwire_app` (app/db/engine.py), so even a superuser login cannot bypass the policies there.

Revision ID: 0011_tenants
Revises: 0010
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011_tenants"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "stockwire_app"
SYSTEM_ROLE = "stockwire_system"
SETTING = "NULLIF(current_setting('stockwire.tenant_id', true), '')::int"
TENANT_DEFAULT = f"COALESCE({SETTING}, 1)"

# every table of tenant data (README, Tenants, says why each is); tenants, sites and site_daily_orders
# are global, alembic_version is the migrations' own
TENANT_TABLES = (
    "skus",
    "locations",
    "counters",
    "stock_levels",
    "inventory_events",
    "reservations",
    "reservation_lines",
    "outbox",
    "channels",
    "channel_locations",
    "ring_fences",
    "channel_holds",
    "external_holds",
    "channel_publications",
    "channel_deliveries",
    "sku_demand",
    "channel_sync_lag",
    "dynamic_buffers",
    "location_routing",
    "location_daily_orders",
    "routing_decisions",
    "api_keys",
    "api_key_events",
    "sku_units",
    "accounts",
    "api_key_accounts",
)
# tables no other tenant table's key reaches: they name `tenants` themselves
ROOT_TABLES = ("skus", "locations", "counters", "reservations", "outbox", "channels", "routing_decisions", "api_keys")
# what cross-tenant background work may do (policies for SYSTEM_ROLE)
SYSTEM_GRANTS = {"outbox": "SELECT, UPDATE, DELETE", "api_keys": "SELECT, UPDATE"}  # FOR UPDATE needs UPDATE

_TABLE_LIST = ", ".join(f"'{t}'" for t in TENANT_TABLES)


def upgrade() -> None:
    _roles()
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("code", sa.String(100), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.text("(now() AT TIME ZONE 'utc')")),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("code", name="uq_tenants_code"),
    )
    op.execute("INSERT INTO tenants (code, name) VALUES ('default', 'Default tenant')")  # id 1
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("code", sa.String(100), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("daily_order_capacity", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.text("(now() AT TIME ZONE 'utc')")),
        sa.PrimaryKeyConstraint("id", name="pk_sites"),
        sa.UniqueConstraint("code", name="uq_sites_code"),
    )
    op.create_table(
        "site_daily_orders",
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("site_id", "day", name="pk_site_daily_orders"),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name="fk_site_daily_orders_site_id_sites"),
    )
    op.add_column("locations", sa.Column("site_id", sa.Integer(), nullable=True))
    op.create_foreign_key("fk_locations_site_id_sites", "locations", "sites", ["site_id"], ["id"])
    op.add_column("api_keys", sa.Column("acts_for", sa.Text(), nullable=True))

    for table in TENANT_TABLES:
        # existing rows move into the default tenant; new rows take the transaction's
        op.execute(f"ALTER TABLE {table} ADD COLUMN tenant_id integer NOT NULL DEFAULT 1")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN tenant_id SET DEFAULT {TENANT_DEFAULT}")
    _rebuild_keys(lambda cols: ["tenant_id", *cols])
    for table in ROOT_TABLES:
        op.create_foreign_key(f"fk_{table}_tenant_id_tenants", table, "tenants", ["tenant_id"], ["id"])
    op.create_index("ix_outbox_id", "outbox", ["id"])  # the relays claim the oldest rows of every tenant
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])  # authentication, before the tenant is known

    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE} "
            f"USING (tenant_id = {SETTING}) WITH CHECK (tenant_id = {SETTING})"
        )
    for table, rights in SYSTEM_GRANTS.items():
        op.execute(f"CREATE POLICY system_access ON {table} TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)")
        op.execute(f"GRANT {rights} ON {table} TO {SYSTEM_ROLE}")
    _grants()
    # the ledger-version check (migration 0009) looks its row up by the position's full key, tenant
    # included, so the (tenant_id, sku_id, location_id, version) index serves it for any role
    op.execute(_ledger_check("tenant_id = NEW.tenant_id AND "))


def downgrade() -> None:
    op.execute(_ledger_check(""))
    for table in SYSTEM_GRANTS:
        op.execute(f"DROP POLICY IF EXISTS system_access ON {table}")
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.drop_index("ix_api_keys_prefix", "api_keys")
    op.drop_index("ix_outbox_id", "outbox")
    for table in ROOT_TABLES:
        op.drop_constraint(f"fk_{table}_tenant_id_tenants", table, type_="foreignkey")
    # only the default tenant's rows can go back to a schema without tenants
    for table in TENANT_TABLES:
        op.execute(f"DELETE FROM {table} WHERE tenant_id <> 1")
    _rebuild_keys(lambda cols: [c for c in cols if c != "tenant_id"])
    for table in TENANT_TABLES:
        op.drop_column(table, "tenant_id")
    op.drop_column("api_keys", "acts_for")
    op.drop_constraint("fk_locations_site_id_sites", "locations", type_="foreignkey")
    op.drop_column("locations", "site_id")
    op.drop_table("site_daily_orders")
    op.drop_table("sites")
    op.drop_table("tenants")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}, {SYSTEM_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}, {SYSTEM_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}, {SYSTEM_ROLE}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE}"
    )
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE}")
    # the roles are cluster-wide (other databases may use them): they stay


LEDGER_CHANGES = (
    "d_on_hand <> 0 OR d_committed <> 0 OR d_reserved <> 0 OR d_unavailable <> 0 "
    "OR d_safety_stock <> 0 OR d_incoming <> 0"
)


def _ledger_check(tenant: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION stock_version_has_ledger_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM inventory_events
        WHERE {tenant}sku_id = NEW.sku_id AND location_id = NEW.location_id AND version = NEW.version
          AND ({LEDGER_CHANGES})
    ) THEN
        RAISE EXCEPTION 'position (sku %, location %) reached version % without a ledger row for it',
            NEW.sku_id, NEW.location_id, NEW.version
            USING ERRCODE = 'check_violation', CONSTRAINT = 'stock_version_has_ledger_row';
    END IF;
    RETURN NULL;
END
$$
"""


def _roles() -> None:
    for role in (APP_ROLE, SYSTEM_ROLE):
        # roles belong to the cluster: another database (or a concurrent migration) may have made them
        op.execute(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
            "END $$"
        )


def _grants() -> None:
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {SYSTEM_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(TENANT_TABLES)} TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON tenants, sites, alembic_version TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON site_daily_orders TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON tenants TO {SYSTEM_ROLE}")
    # tables later migrations make are reachable too (and tests/test_tenants.py fails on one without a policy)
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}")


def _name(name: str) -> str:
    """PostgreSQL keeps 63 bytes of a name: longer ones end in a digest of the whole."""
    if len(name) <= 63:
        return name
    return f"{name[:54]}_{hashlib.md5(name.encode()).hexdigest()[:8]}"


def _rebuild_keys(columns_of: Callable[[list[str]], list[str]]) -> None:
    """Every primary, unique and foreign key (and unique index) of the tenant tables again, with the
    columns `columns_of` gives: tenant_id prepended on the way up, taken out on the way down."""
    bind = op.get_bind()
    foreign = bind.execute(
        sa.text(
            "SELECT c.conrelid::regclass::text, c.conname, c.confrelid::regclass::text, "
            "ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)::text[], "
            "ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)::text[] "
            f"FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid::regclass::text IN ({_TABLE_LIST}) "
            f"AND c.confrelid::regclass::text IN ({_TABLE_LIST})"
        )
    ).all()
    keys = bind.execute(
        sa.text(
            "SELECT c.conrelid::regclass::text, c.conname, c.contype::text, "
            "ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)::text[] "
            f"FROM pg_constraint c WHERE c.contype IN ('p', 'u') AND c.conrelid::regclass::text IN ({_TABLE_LIST})"
        )
    ).all()
    unique_indexes = bind.execute(
        sa.text(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            f"WHERE i.indisunique AND i.indrelid::regclass::text IN ({_TABLE_LIST}) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        )
    ).all()
    for table, name, *_ in foreign:
        op.drop_constraint(name, table, type_="foreignkey")
    for table, name, kind, cols in keys:
        op.drop_constraint(name, table, type_="primary" if kind == "p" else "unique")
        new = columns_of(list(cols))
        if kind == "p":
            op.create_primary_key(f"pk_{table}", table, new)
        else:
            op.create_unique_constraint(_name(f"uq_{table}_{'_'.join(new)}"), table, new)
    for name, definition in unique_indexes:
        head, _, rest = definition.partition(" USING btree (")
        cols, _, tail = rest.partition(")")
        listed = columns_of([c.strip() for c in cols.split(",")])
        op.execute(f"DROP INDEX {name}")
        op.execute(f"{head} USING btree ({', '.join(listed)}){tail}")
    for table, _, referred, cols, referred_cols in foreign:
        local, remote = columns_of(list(cols)), columns_of(list(referred_cols))
        op.create_foreign_key(f"fk_{table}_{cols[-1]}_{referred}", table, referred, local, remote)
