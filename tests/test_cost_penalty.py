"""Repeated too-costly requests are penalised (issue 12, item 1: four clients looping the refused request
must not slow down everyone else). Timing is the benchmark's business (bench/cost_limit.py); these tests
assert on the penalty each answer carries and on the penalty's state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.main import create_app
from app.security.ratelimit import RepeatPenalty
from app.security.scopes import ALL_SCOPES, Scope
from app.settings import Settings
from tests.conftest import create_test_key

PENALTY = 0.01  # seconds: the answers say it; waiting it keeps the tests fast
COSTLY = (
    "query($c: [String!]!) { " + " ".join(f"a{i}: availability(skuCodes: $c) {{ skuCode }}" for i in range(3)) + " }"
)
CODES = ["SKU-1"] * 1000  # 3 x 1,000 rows > the limit of 2,000 below
PLAIN = 'query { availability(skuCodes: ["SKU-1"]) { skuCode } }'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeat_from_the_same_key_or_address_is_penalised_and_others_are_not() -> None:
    clock = Clock()
    penalty = RepeatPenalty(delay_seconds=2.0, window_seconds=60.0, clock=clock)
    assert penalty.refused("k1", "10.0.0.1") == 0.0  # the first refusal: answered at once
    assert penalty.refused("k1", "10.0.0.1") == 2.0
    assert penalty.refused("k2", "10.0.0.2") == 0.0  # another key from another address
    assert penalty.refused("k1", "10.0.0.3") == 2.0  # the same key from elsewhere
    assert penalty.refused("k3", "10.0.0.1") == 2.0  # another key from the same address
    clock.now += 59.9
    assert penalty.refused("k2", None) == 2.0  # within the window of its last refusal
    clock.now += 60.0
    assert penalty.refused("k2", "10.0.0.2") == 0.0  # the window passed: first again
    clock.now += 30.0
    assert penalty.refused("k2", None) == 2.0  # each refusal starts the window again


def test_no_penalty_when_turned_off() -> None:
    penalty = RepeatPenalty(delay_seconds=0.0, window_seconds=60.0)
    assert [penalty.refused("k1", "10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]


@asynccontextmanager
async def serving(database_url: str, **settings: Any) -> AsyncIterator[Callable[[str, str, str], Any]]:
    """The app in process; `post(key, address, query)` sends the query from that client address."""
    app = create_app(Settings(database_url=database_url, broadcast_url="memory://", max_query_cost=2000, **settings))
    async with app.router.lifespan_context(app):
        clients: dict[str, httpx.AsyncClient] = {}

        async def post(key: str, address: str, query: str) -> Any:
            if address not in clients:
                transport = httpx.ASGITransport(app=app, client=(address, 4321))
                clients[address] = httpx.AsyncClient(transport=transport, base_url="http://test")
            variables = {"c": CODES} if "$c" in query else {}
            response = await clients[address].post(
                "/graphql",
                json={"query": query, "variables": variables},
                headers={"Authorization": f"Bearer {key}", "Accept": "application/graphql-response+json"},
            )
            return response.status_code, response.json()

        try:
            yield post
        finally:
            for client in clients.values():
                await client.aclose()


def refusal(answer: tuple[int, Any]) -> dict[str, Any]:
    status, body = answer
    assert status == 400, body
    assert "data" not in body, body
    [error] = body["errors"]
    extensions: dict[str, Any] = error["extensions"]
    assert extensions["code"] == "QUERY_TOO_COSTLY", body
    assert (extensions["limit"], extensions["cost"]) == (2000, 3000)
    return extensions


async def test_a_refused_too_costly_repeat_is_penalised_per_key_and_address(database_url: str) -> None:
    storefront = await create_test_key(database_url, frozenset({Scope.STOREFRONT}))
    other = await create_test_key(database_url, ALL_SCOPES)
    async with serving(database_url, cost_penalty_seconds=PENALTY) as post:
        first = refusal(await post(storefront, "10.0.0.1", COSTLY))
        assert "penaltySeconds" not in first  # the first refusal is answered at once
        repeat = refusal(await post(storefront, "10.0.0.1", COSTLY))
        assert repeat["penaltySeconds"] == PENALTY
        # another key from another address has refused nothing yet
        assert "penaltySeconds" not in refusal(await post(other, "10.0.0.2", COSTLY))
        # the same key from a new address (one attacker, many addresses) and a new key from the
        # penalised address (one attacker, many keys) are both repeats
        assert refusal(await post(storefront, "10.0.0.3", COSTLY))["penaltySeconds"] == PENALTY
        third = await create_test_key(database_url, ALL_SCOPES)
        assert refusal(await post(third, "10.0.0.1", COSTLY))["penaltySeconds"] == PENALTY
        # requests within the limit from the penalised key and address are answered as ever
        status, body = await post(storefront, "10.0.0.1", PLAIN)
        assert status == 200 and body == {"data": {"availability": []}}, body


async def test_no_penalty_when_the_setting_is_zero(database_url: str) -> None:
    key = await create_test_key(database_url, frozenset({Scope.STOREFRONT}))
    async with serving(database_url, cost_penalty_seconds=0) as post:
        for _ in range(3):
            assert "penaltySeconds" not in refusal(await post(key, "10.0.0.1", COSTLY))
