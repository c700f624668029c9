"""The one `metadata` every table module defines its tables on, and the tenant key they share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, Integer, MetaData, text

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# --- tenants (issue 14) ---------------------------------------------------------------------------
# Every table below `tenants`, `sites` and `site_daily_orders` belongs to one tenant: `tenant_id` leads
# its primary key and every unique and foreign key (so each could be distributed by tenant with Citus,
# README "Tenants"), and row-level security shows a transaction only its tenant's rows (migration 0011,
# app/db/tenancy.py). The column fills itself from the transaction's tenant; a session that never set
# one (a superuser's direct SQL, as the benchmarks load data) writes into the default tenant.
TENANT_DEFAULT = "COALESCE(NULLIF(current_setting('stockwire.tenant_id', true), '')::int, 1)"


def tenant_key(root: bool = False) -> Column[int]:
    """`tenant_id`, first column of the primary key. `root`: a table no other tenant table's key
    reaches, which names `tenants` itself (the others get their tenant through a composite key)."""
    args: list[Any] = [ForeignKey("tenants.id")] if root else []
    return Column(
        "tenant_id", Integer, *args, primary_key=True, autoincrement=False, server_default=text(TENANT_DEFAULT)
    )


def tenant_fk(columns: list[str], table: str, referred: list[str]) -> ForeignKeyConstraint:
    """A foreign key within one tenant: (tenant_id, columns) -> table (tenant_id, referred)."""
    return ForeignKeyConstraint(["tenant_id", *columns], [f"{table}.tenant_id", *(f"{table}.{c}" for c in referred)])
