"""`stockwire keys create|list|revoke`: API keys from the command line (no key needed: shell access is the proof)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from app.settings import Settings

T = TypeVar("T")

keys_cli = typer.Typer(help="API keys: create (prints the key last), list, revoke, audit.", no_args_is_help=True)


tenants_cli = typer.Typer(help="Tenants and the sites they share: create, list, site, place.", no_args_is_help=True)


def _in_tenant(code: str | None, work: Callable[[Any], Awaitable[T]], role: str | None = "app") -> T:
    """`work(db)` acting for the tenant with this code (None: the default tenant)."""
    from app.db import tenancy
    from app.security import keys

    async def run(db: Any) -> T:
        tenant_id = tenancy.DEFAULT_TENANT
        if code is not None:
            found = (await keys.tenant_ids(db, [code])).get(code)
            if found is None:
                typer.echo(f"no tenant {code!r} (stockwire tenants list)", err=True)
                raise typer.Exit(2)
            tenant_id = found
        with tenancy.acting_for(tenant_id):
            return await work(db)

    return _with_db(run, role)


def _with_db(work: Callable[..., Awaitable[T]], role: str | None = "app") -> T:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.cli import database_or_exit
    from app.db.engine import Database

    async def run(settings: Settings) -> T:
        # role None: as the login itself (tenants and sites are made by operators, not the application)
        db = Database(settings.database) if role == "app" else Database(settings.database, role=None)
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
    tenant: str | None = typer.Option(None, help="The tenant (code) the key belongs to (default: the default tenant)"),
    acts_for: str = typer.Option("", help="An operator's key: comma-separated tenant codes it may act for"),
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
        operator = [c.strip() for c in acts_for.split(",") if c.strip()]
        created = _in_tenant(
            tenant, lambda db: keys.create_key(db, name or format_scopes(wanted), wanted, acts_for=operator)
        )
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


@tenants_cli.command("create")
def create_tenant(code: str = typer.Argument(...), name: str = typer.Option("", help="Default: the code")) -> None:
    """Make a tenant; then `stockwire keys create --tenant CODE` makes its first admin key."""
    from app.services import tenants

    try:
        made = _with_db(lambda db: tenants.create_tenant(db, code, name), role=None)
    except tenants.TenantInputError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"created tenant {made.code} (id {made.id})")


@tenants_cli.command("list")
def list_tenants() -> None:
    from app.services import tenants

    for t in _with_db(tenants.list_tenants):
        typer.echo(f"{t.id:>6}  {t.code:<30}  {t.name}")


@tenants_cli.command("site")
def create_site(
    code: str = typer.Argument(...),
    name: str = typer.Option("", help="Default: the code"),
    capacity: int | None = typer.Option(None, help="Orders per day at the site, every tenant's together"),
) -> None:
    """Make a physical site several tenants' locations may share (a 3PL's warehouse)."""
    from app.services import tenants

    site_id = _with_db(lambda db: tenants.create_site(db, code, name, capacity), role=None)
    typer.echo(f"created site {code} (id {site_id})")


@tenants_cli.command("place")
def place(
    location: str = typer.Argument(..., help="A location code of the tenant"),
    site: str = typer.Argument(..., help="The site code ('-' to take the location out of its site)"),
    tenant: str | None = typer.Option(None, help="The tenant (code) the location belongs to"),
) -> None:
    """Put a tenant's location at a shared site: its stock stays the tenant's, the site's capacity is shared."""
    from app.services import tenants

    try:
        _in_tenant(tenant, lambda db: tenants.place_location(db, location, None if site == "-" else site))
    except tenants.TenantInputError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"location {location} is at site {site}")
