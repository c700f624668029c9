"""Where the real PostgreSQL and Redis are, and what to do when they are not there.

On CI (`STOCKWIRE_TEST_REQUIRE_SERVICES=1`, set by .ci/run) a missing server fails the test run;
on a laptop without them the tests that need them are skipped with the reason.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "STOCKWIRE_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("STOCKWIRE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRED = os.environ.get("STOCKWIRE_TEST_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI) when a server the test needs is down."""
    if _reachable(host, port):
        return
    reason = f"{name} is not reachable at {host}:{port}"
    if REQUIRED:
        pytest.fail(f"{reason}, and STOCKWIRE_TEST_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(f"{reason} (start it to run this test)")


def require_postgres() -> None:
    require("PostgreSQL", "127.0.0.1", 5432)


def require_redis() -> None:
    require("Redis", "127.0.0.1", 6379)
