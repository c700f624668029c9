"""Which tenant a request acts for: the key's own, or for an operator's key the one the request names.

A key belongs to one tenant and acts for it; naming another tenant is refused. A 3PL operator's key
(`acts_for`) may act for several tenants and must name one in every request (`X-Stockwire-Tenant`
over HTTP, `tenant` in the websocket's connection_init payload): never one by default, so a request
that forgot cannot land in the wrong brand's stock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.db.engine import Database
from app.security import keys
from app.security.auth import Principal

HEADER = "x-stockwire-tenant"
PAYLOAD_FIELD = "tenant"
TENANT_REQUIRED = "TENANT_REQUIRED"
TENANT_FORBIDDEN = "TENANT_FORBIDDEN"


class TenantRefused(Exception):
    """The request names no tenant where it must, or one its key may not act for."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TenantDirectory:
    """Tenant codes to ids, cached for `ttl_seconds` (tenants are made rarely, never renumbered)."""

    def __init__(self, db: Database, ttl_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._ids: dict[str, tuple[int | None, float]] = {}

    async def id_of(self, code: str) -> int | None:
        now = self.clock()
        hit = self._ids.get(code)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = (await keys.tenant_ids(self.db, [code])).get(code)
        if len(self._ids) > 10_000:
            self._ids.clear()  # made-up codes must not grow this without bound
        self._ids[code] = (found, now + self.ttl_seconds)
        return found

    async def resolve(self, principal: Principal, asked: str | None) -> int:
        """The tenant this request acts for; raises TenantRefused."""
        asked = asked.strip() if asked else None
        if principal.is_operator:
            if not asked:
                raise TenantRefused(
                    400, TENANT_REQUIRED, "this key acts for several tenants: name one (X-Stockwire-Tenant: <code>)"
                )
            tenant_id = await self.id_of(asked)
            if tenant_id is None or tenant_id not in principal.acts_for:
                raise TenantRefused(403, TENANT_FORBIDDEN, f"this key may not act for tenant {asked!r}")
            return tenant_id
        if asked:
            tenant_id = await self.id_of(asked)
            if tenant_id != principal.tenant_id:
                raise TenantRefused(403, TENANT_FORBIDDEN, f"this key may not act for tenant {asked!r}")
        return principal.tenant_id
