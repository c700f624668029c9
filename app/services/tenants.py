"""Tenants and shared sites (issue 14), and background work done once per tenant.

Tenants and sites are not tenant data: operators make them (`stockwire tenants ...`, as the login
itself: the application's role may only read them). A tenant's location joins a shared site with
`place_location`, in that tenant's context: its positions stay its own, the site's daily order
capacity counts every tenant's orders (routing, README "Tenants").

Background work that changes tenant data (the expiry sweeper, channel publication) runs per tenant:
`for_each_tenant` and `PerTenant` set the tenant as a request would, so the same row-level security
applies to it and it never needs a role that sees every tenant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import tenancy
from app.db.engine import Database
from app.db.tables import locations, sites, tenants

log = logging.getLogger("stockwire.tenants")
T = TypeVar("T")
W = TypeVar("W")


class TenantInputError(ValueError):
    """A tenant, site or placement cannot be made as asked."""


@dataclass(frozen=True, slots=True)
class TenantView:
    id: int
    code: str
    name: str


async def list_tenants(db: Database) -> list[TenantView]:
    async with db.read() as conn:
        rows = await conn.execute(select(tenants.c.id, tenants.c.code, tenants.c.name).order_by(tenants.c.id))
        return [TenantView(r.id, r.code, r.name) for r in rows]


async def create_tenant(db: Database, code: str, name: str) -> TenantView:
    """As the login (Database(role=None)): the application's role cannot make tenants."""
    if not code.strip() or len(code) > 100 or "," in code:
        raise TenantInputError("a tenant code is 1-100 characters, without commas")

    async def work(conn: AsyncConnection) -> TenantView:
        row = (await conn.execute(insert(tenants).values(code=code, name=name or code).returning(tenants.c.id))).one()
        return TenantView(row.id, code, name or code)

    return await db.write(work, notify=False)


async def create_site(db: Database, code: str, name: str, daily_order_capacity: int | None) -> int:
    """A physical place several tenants share, with its daily order capacity as a whole (None: none)."""

    async def work(conn: AsyncConnection) -> int:
        values: dict[str, Any] = {"code": code, "name": name or code, "daily_order_capacity": daily_order_capacity}
        return int((await conn.execute(insert(sites).values(**values).returning(sites.c.id))).scalar_one())

    return await db.write(work, notify=False)


async def place_location(db: Database, location_code: str, site_code: str | None) -> None:
    """The current tenant's location joins a shared site (None: leaves it)."""

    async def work(conn: AsyncConnection) -> None:
        site_id = None
        if site_code is not None:
            site_id = await conn.scalar(select(sites.c.id).where(sites.c.code == site_code))
            if site_id is None:
                raise TenantInputError(f"no site {site_code!r}")
        done = await conn.execute(update(locations).where(locations.c.code == location_code).values(site_id=site_id))
        if done.rowcount != 1:
            raise TenantInputError(f"no location {location_code!r} in this tenant")

    await db.write(work, notify=False)


async def for_each_tenant(db: Database, work: Callable[[], Awaitable[T]]) -> dict[int, T]:
    """Run `work` once per tenant, each run acting for its tenant."""
    done: dict[int, T] = {}
    for tenant in await list_tenants(db):
        with tenancy.acting_for(tenant.id):
            done[tenant.id] = await work()
    return done


class PerTenant(Generic[W]):
    """One long-running worker per tenant (made by `make`, run by `run`), each in a task acting for
    its tenant; tenants made while the service runs get theirs within `every` seconds."""

    def __init__(
        self, db: Database, make: Callable[[], W], run: Callable[[W], Awaitable[None]], every: float = 5.0
    ) -> None:
        self.db = db
        self.make = make
        self.run_one = run
        self.every = every
        self.workers: dict[int, W] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                try:
                    for tenant in await list_tenants(self.db):
                        if tenant.id not in self._tasks:
                            self._start(tenant.id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not list tenants: %s", exc)
                await asyncio.sleep(self.every)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _start(self, tenant_id: int) -> None:
        context = copy_context()
        context.run(tenancy.enter, tenant_id)  # the task runs in a context acting for its tenant
        worker = context.run(self.make)
        self.workers[tenant_id] = worker
        self._tasks[tenant_id] = asyncio.get_running_loop().create_task(
            self.run_one(worker),  # type: ignore[arg-type]
            name=f"stockwire-tenant-{tenant_id}",
            context=context,
        )
