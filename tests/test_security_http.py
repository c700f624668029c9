"""GraphQL over HTTP as the specification has it (media types, status codes, GET for queries only),
the request limits as settings, and faults masked to clients but logged with the request id."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from app.graphql.http import negotiate
from app.main import create_app
from app.services import reservations
from app.settings import Settings
from tests.conftest import Api, create_test_key
from tests.helpers import catalogue

GRAPHQL_RESPONSE = "application/graphql-response+json"
QUERY = 'query { availability(skuCodes: ["SKU-1"]) { skuCode available } }'


async def post(api: Api, body: object, accept: str | None = GRAPHQL_RESPONSE, **headers: str) -> httpx.Response:
    h = {**api.headers, **headers}
    if accept is not None:
        h["Accept"] = accept
    return await api.client.post("/graphql", json=body, headers=h)


# -- media types and status codes -----------------------------------------------------------------


async def test_graphql_response_json_gets_the_specs_status_codes(api: Api) -> None:
    ok = await post(api, {"query": QUERY})
    assert (ok.status_code, ok.headers["content-type"]) == (200, f"{GRAPHQL_RESPONSE}; charset=utf-8")
    assert ok.json() == {"data": {"availability": []}}

    parse = await post(api, {"query": "query { availability("})
    assert parse.status_code == 400
    assert "data" not in parse.json()  # nothing executed: no data entry at all
    assert parse.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"

    invalid = await post(api, {"query": "query { nothingHere }"})
    assert invalid.status_code == 400
    assert invalid.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

    bad_variables = await post(api, {"query": "query($s: [String!]!) { availability(skuCodes: $s) { available } }"})
    assert bad_variables.status_code == 400
    assert bad_variables.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    # execution started: 200 even with errors (a field error leaves data: null)
    started = await post(api, {"query": 'query { inventoryEvents(after: "zzz") { nodes { id } } }'})
    assert started.status_code == 200
    assert started.json()["data"] is None
    assert started.json()["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"


async def test_no_accept_header_means_graphql_response_json(api: Api) -> None:
    request = api.client.build_request("POST", "/graphql", json={"query": "query {"}, headers=api.headers)
    del request.headers["accept"]
    response = await api.client.send(request)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)


async def test_application_json_keeps_the_legacy_200(api: Api) -> None:
    for accept in ("application/json", "*/*", "application/*"):
        response = await post(api, {"query": "query { nothingHere }"}, accept=accept)
        assert response.status_code == 200, accept
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_nothing_acceptable_is_406(api: Api) -> None:
    response = await post(api, {"query": QUERY}, accept="text/html")
    assert response.status_code == 406
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_ACCEPTABLE"


def test_accept_negotiation_follows_q_values() -> None:
    assert negotiate(None) == GRAPHQL_RESPONSE
    assert negotiate("application/json") == "application/json"
    assert negotiate(f"application/json;q=0.9, {GRAPHQL_RESPONSE}") == GRAPHQL_RESPONSE
    assert negotiate(f"application/json, {GRAPHQL_RESPONSE};q=0.5") == "application/json"
    assert negotiate(f"{GRAPHQL_RESPONSE};q=0, text/html") is None
    assert negotiate("image/png") is None


async def test_get_serves_queries_only(api: Api) -> None:
    h = {**api.headers, "Accept": GRAPHQL_RESPONSE}
    got = await api.client.get("/graphql", params={"query": QUERY}, headers=h)
    assert got.status_code == 200 and got.json() == {"data": {"availability": []}}
    mutation = 'mutation { releaseReservation(id: "x") { userErrors { code } } }'
    refused = await api.client.get("/graphql", params={"query": mutation}, headers=h)
    assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
    assert refused.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
    subscription = 'subscription { availabilityChanged(skuCodes: ["SKU-1"]) { available } }'
    refused = await api.client.get("/graphql", params={"query": subscription}, headers=h)
    assert refused.status_code == 405
    over_post = await post(api, {"query": subscription})
    assert over_post.status_code == 400
    assert "websockets" in over_post.json()["errors"][0]["message"]


async def test_missing_and_unknown_keys_are_401_with_a_challenge(api: Api) -> None:
    for headers, message in (
        ({}, "an API key is required"),
        ({"Authorization": "Bearer sw_000000000000_" + "x" * 43}, "unknown or revoked"),
        ({"Authorization": "Bearer not-even-a-key"}, "unknown or revoked"),
        ({"Authorization": f"Token {api.key}"}, "unknown or revoked"),
    ):
        response = await api.client.post("/graphql", json={"query": QUERY}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == 'Bearer realm="stockwire"'
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "UNAUTHENTICATED" and message in error["message"]
    lower = await api.client.post("/graphql", json={"query": QUERY}, headers={"Authorization": f"bearer {api.key}"})
    assert lower.status_code == 200  # the scheme is case-insensitive


async def test_every_response_carries_a_request_id(api: Api) -> None:
    mine = await post(api, {"query": QUERY}, **{"X-Request-Id": "checkout-7f3a.1"})
    assert mine.headers["x-request-id"] == "checkout-7f3a.1"  # kept, to follow a call across services
    made = await post(api, {"query": QUERY}, **{"X-Request-Id": "evil\r\nline"[:4] + " injected"})
    assert made.headers["x-request-id"] != "evil injected" and len(made.headers["x-request-id"]) == 32
    refused = await api.client.post("/graphql", json={"query": QUERY})
    assert len(refused.headers["x-request-id"]) == 32


# -- faults are masked, and logged with the request id ---------------------------------------------


async def test_a_fault_is_masked_to_the_client_and_logged_with_its_request_id(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await catalogue(api)

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("connection to db-internal.example:5432 failed, password=hunter2")

    monkeypatch.setattr(reservations, "reserve", broken)
    caplog.set_level(logging.ERROR, logger="stockwire.errors")
    query = """mutation($input: ReserveInput!) { reserve(input: $input) { userErrors { code } } }"""
    variables = {"input": {"lines": [{"skuCode": "SKU-1", "quantity": 1}], "idempotencyKey": "k"}}
    response = await post(api, {"query": query, "variables": variables}, **{"X-Request-Id": "req-42"})
    assert response.status_code == 200  # execution had started
    (error,) = response.json()["errors"]
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-42"}
    assert "hunter2" not in response.text and "db-internal" not in response.text
    logged = [r for r in caplog.records if "req-42" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "hunter2" in str(logged[0].exc_info[1])  # the operator sees the cause


async def test_validation_and_limit_errors_are_not_masked(api: Api) -> None:
    aliases = "query { " + " ".join(f"a{i}: __typename" for i in range(21)) + " }"
    response = await post(api, {"query": aliases})
    assert response.json()["errors"][0]["message"] == "21 aliases found. Allowed: 20"


# -- the limits are settings -------------------------------------------------------------------------


@pytest.fixture
async def strict(tmp_path: Path, new_database: Callable[[], str]) -> AsyncIterator[Api]:
    url = new_database()
    settings = Settings(
        database_url=url,
        max_query_depth=1,  # the root field's own selections are depth 1
        max_aliases=2,
        max_query_tokens=60,
        max_request_bytes=2048,
        max_input_items=3,
    )
    key = await create_test_key(url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, app.state.runtime.ctx, key)


async def test_every_limit_is_a_setting(strict: Api) -> None:
    async def code(body: object) -> tuple[int, str]:
        response = await post(strict, body)
        return response.status_code, response.json()["errors"][0]["extensions"]["code"]

    deep = 'query { availability(skuCodes: ["A"]) { locations { skuCode } } }'
    assert await code({"query": deep}) == (400, "QUERY_TOO_DEEP")
    assert (await post(strict, {"query": 'query { availability(skuCodes: ["A"]) { skuCode } }'})).status_code == 200
    assert await code({"query": "query { a: __typename b: __typename c: __typename }"}) == (400, "TOO_MANY_ALIASES")
    many = "query { availability(skuCodes: [" + ", ".join('"A"' for _ in range(60)) + "]) { skuCode } }"
    assert await code({"query": many}) == (400, "QUERY_TOO_LARGE")
    assert await code({"query": "query { __typename }", "pad": "x" * 3000}) == (413, "PAYLOAD_TOO_LARGE")
    wide = {
        "query": "query($s: [String!]!) { availability(skuCodes: $s) { skuCode } }",
        "variables": {"s": list("ABCD")},
    }
    assert await code(wide) == (200, "INPUT_TOO_LARGE")
    # max_batch_size: the hostile-input table sends a batch one over its server's limit (BATCH_TOO_LARGE)


async def test_a_body_that_lies_about_its_length_is_still_cut_off(strict: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "query { __typename }", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    headers = {**strict.headers, "Content-Type": "application/json", "Accept": GRAPHQL_RESPONSE}
    response = await strict.client.post("/graphql", content=chunks(), headers=headers)  # chunked: no Content-Length
    assert response.status_code == 413


def test_the_defaults_suit_a_public_storefront() -> None:
    s = Settings()
    assert (s.max_query_depth, s.max_aliases, s.max_query_tokens) == (10, 20, 2000)
    assert s.max_request_bytes == 1_048_576 and s.max_input_items == 10_000 and s.max_batch_size == 1000
    assert s.allowed_origins == []  # same-origin pages and non-browser clients only, until listed


def test_input_items_count_every_list_at_any_depth() -> None:
    import app.graphql.schema  # noqa: F401  (builds the schema, so input types are resolved)
    from app.graphql.inputs import ReserveInput, ReserveLineInput
    from app.graphql.permissions import count_items

    lines = [ReserveLineInput(sku_code=f"S{i}", quantity=1, location_code=None) for i in range(3)]
    assert count_items(ReserveInput(lines=lines, idempotency_key="k")) == 3
    assert count_items([ReserveInput(lines=lines, idempotency_key="k")] * 2) == 2 + 6
    assert count_items([["a", "b"], ["c"], []]) == 3 + 3
    assert count_items("a string") == 0 and count_items(None) == 0


# -- browsers on other origins ------------------------------------------------------------------------


async def test_only_listed_origins_get_cors_answers(tmp_path: Path, new_database: Callable[[], str], api: Api) -> None:
    shop = "https://shop.example.com"
    preflight = {
        "Origin": shop,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    # the default lists no origin: a browser on another origin gets no CORS grant (same-origin only)
    unlisted = await api.client.options("/graphql", headers=preflight)
    assert "access-control-allow-origin" not in unlisted.headers
    url = new_database()
    key = await create_test_key(url)
    app = create_app(Settings(database_url=url, allowed_origins=[shop]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            granted = await client.options("/graphql", headers=preflight)
            assert granted.status_code == 200
            assert granted.headers["access-control-allow-origin"] == shop
            assert "authorization" in granted.headers["access-control-allow-headers"].lower()
            other = await client.options("/graphql", headers={**preflight, "Origin": "https://evil.example"})
            assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
            answer = await client.post(
                "/graphql",
                json={"query": QUERY},
                headers={"Origin": shop, "Authorization": f"Bearer {key}", "Accept": GRAPHQL_RESPONSE},
            )
            assert answer.status_code == 200 and answer.json()["data"] == {"availability": []}
            assert answer.headers["access-control-allow-origin"] == shop
            assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
