"""Disagreements the differential test (tests/test_differential.py) found between the service and the
contract, each reduced to its smallest reproduction, on PostgreSQL.

Each test fails without its fix (named in its docstring).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import Api, _truncate, create_test_key
from tests.helpers import LEVELS, catalogue, event, record


@pytest.fixture
async def pg_api(postgres_url: str) -> AsyncIterator[Api]:
    await _truncate(postgres_url)
    key = await create_test_key(postgres_url)
    app = create_app(Settings(database_url=postgres_url, broadcast_url="memory://"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, app.state.runtime.ctx, key)


async def test_an_event_that_changes_nothing_on_a_new_position_answers_no_version(pg_api: Api) -> None:
    """F1 (fix: app/services/events.py `_answered`). Versions start at 1 (contract, StockLevel.version);
    0 is a version no StockLevel ever shows.

    REPAIRED 5 where nothing was ever recorded clips at 0 (drift 5) and changes nothing: the position
    does not exist for stockLevels, so the event's `version` is null, not 0.
    """
    await catalogue(pg_api, ["SKU-1"], [("WH-1", 10)])
    repaired = event("REPAIRED", "SKU-1", "WH-1", 5)
    result = await record(pg_api, repaired)
    assert result["userErrors"] == []
    assert (await pg_api.ok(LEVELS, skus=["SKU-1"], locs=["WH-1"]))["stockLevels"] == []
    assert result["results"] == [{"index": 0, "status": "APPLIED", "version": None, "drift": 5}]
    # a repeat answers the version its first occurrence recorded: none either
    again = await record(pg_api, repaired)
    assert again["results"] == [{"index": 0, "status": "DUPLICATE", "version": None, "drift": 0}]
