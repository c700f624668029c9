from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.db import stock
from app.db.engine import Database
from app.settings import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a use case runs for: the API key's id (None: Stockwire itself, the CLI or a test), and
    whether it may see and act on what other keys made (an admin; Stockwire itself)."""

    key_id: str | None
    sees_all: bool

    def owns(self, owner_key_id: str | None) -> bool:
        """May this actor read or change something that `owner_key_id` made?"""
        return self.sees_all or (self.key_id is not None and owner_key_id == self.key_id)


SYSTEM = Actor(key_id=None, sees_all=True)


@contextmanager
def acting_on_ledger(actor: Actor) -> Iterator[None]:
    """Every ledger row written inside names this actor's key (none: Stockwire itself)."""
    with stock.ledger_actor(actor.key_id):
        yield


@dataclass
class Ctx:
    """What every use case needs: the database, the settings and the clock (injectable for tests),
    and the actor it runs for (the GraphQL layer sets it per call: app/graphql/permissions.acting)."""

    db: Database
    settings: Settings
    clock: Callable[[], datetime] = field(default=utc_now)
    actor: Actor = SYSTEM
