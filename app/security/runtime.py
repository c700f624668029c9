"""What the security layer needs at run time, and the start-up rule about keys."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from app.db.engine import Database
from app.security import keys
from app.security.auth import Authenticator
from app.security.ratelimit import RepeatPenalty, TokenBucketLimiter
from app.security.scopes import ALL_SCOPES
from app.security.tenants import TenantDirectory
from app.settings import Settings

log = logging.getLogger("stockwire.security")


class NoApiKeyError(RuntimeError):
    """A PostgreSQL deployment with no active API key: nobody could call it, so it does not start."""


@dataclass
class Security:
    settings: Settings
    authenticator: Authenticator
    holds: TokenBucketLimiter
    costly: RepeatPenalty  # repeated too-costly requests (app/graphql/limits.py)
    tenants: TenantDirectory
    # the same holds counted per tenant: one brand's keys together cannot take every slot (issue 14)
    tenant_holds: TokenBucketLimiter


def make_security(db: Database, settings: Settings) -> Security:
    return Security(
        settings=settings,
        authenticator=Authenticator(db, ttl_seconds=settings.auth_cache_seconds),
        holds=TokenBucketLimiter(settings.hold_rate_limit, settings.hold_rate_window_seconds),
        costly=RepeatPenalty(settings.cost_penalty_seconds, settings.cost_penalty_window_seconds),
        tenants=TenantDirectory(db, ttl_seconds=settings.auth_cache_seconds),
        tenant_holds=TokenBucketLimiter(settings.tenant_hold_rate_limit, settings.hold_rate_window_seconds),
    )


async def require_a_key(db: Database, development: bool) -> keys.CreatedKey | None:
    """At start: the embedded development default (`development`) makes a key with every scope if it has
    none and prints it; a deployment refuses to start until `stockwire keys create` ran."""
    if await keys.has_active_key(db):
        return None
    if not development:
        raise NoApiKeyError(
            "no active API key in the database: create one first with "
            "`stockwire keys create --scopes admin` (see the README, section Security)"
        )
    created = await keys.create_key(db, "development key (created at start)", ALL_SCOPES)
    banner = (
        "\n"
        "  No API key existed, so a development key with every scope was created:\n"
        f"\n      {created.secret}\n\n"
        "  Send it as `Authorization: Bearer <key>`. It is shown only this once; revoke it with\n"
        f"  `stockwire keys revoke {created.key.prefix}` and make your own with `stockwire keys create`.\n"
    )
    print(banner, file=sys.stderr, flush=True)
    log.warning("created development API key %s (every scope); printed on stderr", created.key.prefix)
    return created
