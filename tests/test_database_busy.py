"""A database that cannot serve a request in time is said so: UNAVAILABLE (retry shortly), not
"Unexpected error.", and nothing waits longer than `db_pool_timeout_seconds` for a connection."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from app.graphql.errors import UNAVAILABLE_MESSAGE
from tests.conftest import served
from tests.helpers import catalogue

LOCATIONS = "{ locations { code } }"


async def test_a_request_that_gets_no_connection_in_time_is_told_to_retry(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    small = {"db_pool_size": 1, "db_max_overflow": 0, "db_pool_warm": 1, "db_pool_timeout_seconds": 0.5}
    async with served(database_url, **small) as (api, _):
        await asyncio.sleep(1.5)  # the start-up's own reads (statistics, tenants) done
        # nothing holds a connection while idle: the channel publisher takes one only for a channel to
        # publish (its advisory locks), so one connection serves this app's requests
        assert api.ctx.db.engine.sync_engine.pool.checkedout() == 0
        await catalogue(api)  # the key is in the authentication cache from here on
        assert (await api.ok(LOCATIONS))["locations"] == [{"code": "WH-1"}]
        async with api.ctx.db.begin() as held:  # the pool's one connection, taken
            await held.execute(text("SELECT 1"))
            started = time.monotonic()
            body = (await api.raw(LOCATIONS)).json()
            waited = time.monotonic() - started
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UNAVAILABLE"
        assert error["message"] == UNAVAILABLE_MESSAGE
        assert error["extensions"]["requestId"]
        assert 0.5 <= waited < 5
        # logged as the database's state, one line without a traceback, not as an unexpected error
        said = [
            r for r in caplog.records if r.name == "stockwire.errors" and error["extensions"]["requestId"] in r.message
        ]
        assert [(r.levelname, r.getMessage().split(" [")[0], r.exc_info) for r in said] == [
            ("WARNING", "database unavailable at locations", None)
        ]
        # the connection back in the pool, the same request answers
        assert (await api.ok(LOCATIONS))["locations"] == [{"code": "WH-1"}]
