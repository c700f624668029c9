"""Disagreements the differential test (tests/test_differential.py) found between the service and the
contract, each reduced to its smallest reproduction, on PostgreSQL.

A finding whose fix belongs to a file another helper of issue 11 owns is marked xfail(strict=True): the
test documents the contract's answer, fails today as expected, and turns red (XPASS) the moment the fix
lands, so whoever fixes it removes the mark.
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


@pytest.mark.xfail(
    strict=True,
    reason="finding F1: EventResult.version 0 for a position no event ever changed; fix in app/services/events.py",
)
async def test_an_event_that_changes_nothing_on_a_new_position_answers_no_version(pg_api: Api) -> None:
    """Versions start at 1 (contract, StockLevel.version); 0 is a version no StockLevel ever shows.

    REPAIRED 5 where nothing was ever recorded clips at 0 (drift 5) and changes nothing: the position
    does not exist for stockLevels, so the event's `version` is null, not 0.
    """
    await catalogue(pg_api, ["SKU-1"], [("WH-1", 10)])
    result = await record(pg_api, event("REPAIRED", "SKU-1", "WH-1", 5))
    assert result["userErrors"] == []
    assert (await pg_api.ok(LEVELS, skus=["SKU-1"], locs=["WH-1"]))["stockLevels"] == []
    assert result["results"] == [{"index": 0, "status": "APPLIED", "version": None, "drift": 5}]
