from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.db.engine import Database
from app.settings import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Ctx:
    """What every use case needs: the database, the settings and the clock (injectable for tests)."""

    db: Database
    settings: Settings
    clock: Callable[[], datetime] = field(default=utc_now)
