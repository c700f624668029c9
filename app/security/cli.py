"""`stockwire keys create|list|revoke`: API keys from the command line (no key needed: shell access is the proof)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from app.settings import Settings

T = TypeVar("T")

keys_cli = typer.Typer(help="API keys: create (prints the key last), list, revoke, audit.", no_args_is_help=True)


def _with_db(work: Callable[..., Awaitable[T]]) -> T:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.cli import database_or_exit
    from app.db.engine import Database

    async def run(settings: Settings) -> T:
        db = Database(settings.database)
        try:
            return await work(db)
        finally:
            await db.dispose()

    try:
        with database_or_exit(Settings()) as settings:  # the embedded default: started (or shared) and migrated
            return asyncio.run(run(settings))
    except (OperationalError, ProgrammingError) as exc:
        problem = type(exc.orig).__name__
        typer.echo(f"cannot use the api_keys table ({problem}); run `stockwire migrate` first", err=True)
        raise typer.Exit(2) from None


@keys_cli.command("create")
def create(
    scopes: str = typer.Option(..., help="Comma-separated: storefront, checkout, router, integration, admin"),
    name: str = typer.Option("", help="What the key is for (default: its scopes)"),
) -> None:
    """Create a key. Its last line of output is the key itself, shown only this once."""
    from app.security import keys
    from app.security.scopes import UnknownScopeError, format_scopes, parse_scopes

    try:
        wanted = parse_scopes(scopes.split(","))
    except UnknownScopeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        created = _with_db(lambda db: keys.create_key(db, name or format_scopes(wanted), wanted))
    except keys.KeyInputError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    k = created.key
    typer.echo(f"created API key {k.prefix} (id {k.id}, name {k.name!r}) with scopes {format_scopes(k.scopes)}")
    typer.echo("send it as `Authorization: Bearer <key>`; it is not stored and will not be shown again:")
    typer.echo(created.secret)


@keys_cli.command("list")
def list_(all_: bool = typer.Option(False, "--all", help="Include revoked keys")) -> None:
    """List keys (never their secrets)."""
    from app.security import keys
    from app.security.scopes import format_scopes

    async def read(db: Any) -> tuple[list[keys.ApiKeyView], list[keys.KeyEventView]]:
        return await keys.list_keys(db, include_revoked=all_), await keys.key_events(db)

    found, events = _with_db(read)
    by = {(e.key_id, e.action): e.actor for e in events}
    for k in found:
        state = (
            f"revoked {k.revoked_at:%Y-%m-%d %H:%M} by {by.get((k.id, keys.REVOKED), '?')}"
            if k.revoked_at
            else "active"
        )
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        typer.echo(
            f"{k.prefix}  {k.id}  {format_scopes(k.scopes):<40}  created by {by.get((k.id, keys.CREATED), '?'):<20}"
            f"  {state:<44}  last used {used}  {k.name}"
        )
    if not found:
        typer.echo("no keys")


@keys_cli.command("audit")
def audit(key: str | None = typer.Argument(None, help="Only this key (prefix or id)")) -> None:
    """Who created and revoked keys, oldest first (an admin key over GraphQL, or the command line)."""
    from app.security import keys

    for e in _with_db(lambda db: keys.key_events(db, key)):
        typer.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.action:<8}  {e.key_prefix}  {e.key_name!r}  by {e.actor}")


@keys_cli.command("revoke")
def revoke(key: str = typer.Argument(..., help="The key's prefix or id")) -> None:
    """Revoke a key: refused by this deployment within auth_cache_seconds (5 s by default)."""
    from app.security import keys

    revoked = _with_db(lambda db: keys.revoke_key(db, key))
    if revoked is None:
        typer.echo(f"no API key {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {revoked.prefix} ({revoked.name}) at {revoked.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
