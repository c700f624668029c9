"""Planner statistics for a new database, before autovacuum's first visit.

A table autovacuum has never analysed has no statistics, and Postgres plans it from guesses: each
tenant is taken for a row or two (an equality with no statistics selects 0.5 %), so a probe by
(tenant_id, code) and a scan of the tenant's whole (tenant_id, id) index look alike and the planner may
take either. Autovacuum analyses a table once 50 rows changed, but only at its next visit to the
database (autovacuum_naptime: a minute by default), and a service taking orders from its first second
(bench/push.py runs its whole measurement inside that minute) read a SKU's whole table per look-up
until then. The hot statements probe the ledger and the positions whatever the statistics say
(app/db/pg.py, above _LOOK_UP); this gives the rest their statistics within seconds.

Only tables never analysed are touched: once analysed, keeping them fresh is autovacuum's work. Several
processes may run it at once; a second ANALYZE of a small table is cheap and harmless.
"""

from __future__ import annotations

from app.db import pg, tenancy
from app.db.engine import Database

# the rows changed after which a never-analysed table is analysed: autovacuum_analyze_threshold's default
CHANGED_ROWS = 50

_NEVER_ANALYSED = (
    "SELECT quote_ident(relname) FROM pg_stat_user_tables WHERE schemaname = current_schema() "
    "AND last_analyze IS NULL AND last_autoanalyze IS NULL AND n_mod_since_analyze >= $1 ORDER BY relname"
)


async def analyse_new_tables(db: Database, changed_rows: int = CHANGED_ROWS) -> list[str]:
    """ANALYZE every table never analysed that has had `changed_rows` rows changed; returns their names.

    As the login user (`SET LOCAL ROLE NONE`), who owns the tables it migrated: the application's roles
    may not analyse them. A login user that does not own them gets Postgres' warning and nothing else."""
    with tenancy.system():
        async with db.begin_driver() as conn:
            await conn.execute("SET LOCAL ROLE NONE")
            tables: list[str] = [r[0] for r in await pg.run(conn.fetch, _NEVER_ANALYSED, changed_rows)]
            if tables:
                await conn.execute(f"ANALYZE {', '.join(tables)}")
    return tables
