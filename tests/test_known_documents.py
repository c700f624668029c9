"""Known documents (app/graphql/known_documents.py) answer exactly as Strawberry's path does.

One history of requests (successes, userErrors, variables of the wrong type or missing, unknown fields,
syntax errors, a scope refusal, the cost limit, the hold rate limit, the input guard, faults in a query
and a mutation, several operations with and without operationName, GET) runs three times in one app,
each with keys of its own: once to make every document known, once on the known documents, and once
with them switched off (every request Strawberry's way). The last two must give the same status,
media type and body, byte for byte once the SKU code, reservation ids and times are made alike, the
same metrics and the same log lines (faults with their request id, key id and traceback).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.graphql import http_view, limits
from app.graphql.http_view import SecureGraphQLView
from app.main import create_app
from app.observability.logging import configure_logging, formatter
from app.security.scopes import Scope
from app.services import queries, reservations
from app.settings import Settings
from tests.conftest import Api, create_test_key
from tests.helpers import RESERVE, catalogue, receive

AVAILABILITY = "query($skus: [String!]!) { availability(skuCodes: $skus) { skuCode available } }"
TWO_OPERATIONS = """query Levels($skus: [String!]!) { availability(skuCodes: $skus) { skuCode available } }
query Codes($skus: [String!]!) { unknownSkuCodes(skuCodes: $skus) }"""
ALIASED = """mutation($a: ReserveInput!, $b: ReserveInput!) {
  first: reserve(input: $a) { reservation { id } userErrors { code message field } }
  second: reserve(input: $b) { reservation { id lines { quantity } } userErrors { code } } }"""
COST_LIMIT = 500
HOLDS_A_WINDOW = 10


def _line(sku: str, quantity: Any, at: str = "WH-1") -> dict[str, Any]:
    return {"skuCode": sku, "quantity": quantity, "locationCode": at}


RECORD = """mutation($input: [InventoryEventInput!]!) {
  recordInventoryEvents(input: $input) { results { index status } userErrors { code message field } } }"""
_OMIT = object()
# ReserveInput fields changed from a valid input: valid ones, and what graphql-core refuses
_RESERVE_INPUTS: list[dict[str, Any]] = [
    {"key": 1, "ttlSeconds": 60, "cartRef": "c", "channelCode": None, "accountCode": None, "allowPartial": False},
    {"key": 2, "ttlSeconds": None, "cartRef": None},
    {"idempotencyKey": _OMIT},
    {"idempotencyKey": None},
    {"idempotencyKey": 7},
    {"lines": None},
    {"lines": []},
    {"allowPartial": None},
    {"allowPartial": "yes"},
    {"ttlSeconds": 1.5},
    {"ttlSeconds": 2**31},
    {"ttlSeconds": True},
    {"nope": 1},
]


def _event(sku: str, i: int, **changes: Any) -> dict[str, Any]:
    event = {
        "source": "known-docs",
        "externalId": f"{sku}-{i}",
        "type": "RECEIVED",
        "skuCode": sku,
        "locationCode": "WH-1",
        "quantity": 1,
        "occurredAt": "2026-01-01T09:00:00Z",
    }
    return {k: v for k, v in (event | changes).items() if v is not _OMIT}


_EVENT_INPUTS: list[tuple[int, dict[str, Any]]] = [
    (80, {}),
    (81, {"reason": "r", "reference": None, "unit": None, "expectedAt": "2026-01-02T09:00:00+01:00"}),
    (82, {"type": "LOST"}),
    (83, {"type": "received"}),
    (84, {"quantity": "1"}),
    (85, {"occurredAt": "yesterday"}),
    (86, {"occurredAt": _OMIT}),
    (87, {"extra": 1}),
    (88, {"source": None}),
]


def _history(sku: str) -> list[dict[str, Any]]:
    """Requests as (json body | GET params, as which key): `key` the run's own, `limited` a storefront key."""

    def reserve(key: str, *lines: dict[str, Any]) -> dict[str, Any]:
        return {"query": RESERVE, "variables": {"input": {"lines": list(lines), "idempotencyKey": sku + key}}}

    def reserve_with(**changes: Any) -> dict[str, Any]:
        given = {"lines": [_line(sku, 1)], "idempotencyKey": sku + "-in-" + str(changes.pop("key", ""))}
        given |= changes
        return {"query": RESERVE, "variables": {"input": {k: v for k, v in given.items() if v is not _OMIT}}}

    def post(body: dict[str, Any], key: str = "key") -> dict[str, Any]:
        return {"body": body, "as": key}

    return [
        post(reserve("-a", _line(sku, 2))),
        post(reserve("-a", _line(sku, 2))),  # a repeat: the same reservation
        post(reserve("-a", _line(sku, 1))),  # the key for another request: IDEMPOTENCY_CONFLICT
        post(reserve("-b", _line(sku, 200))),  # more than there is: the shortfall
        post(reserve("-c", _line(sku + "-NONE", 1))),  # unknown SKU
        post(reserve("-d", _line(sku, "two"))),  # a variable of the wrong type
        post({"query": RESERVE, "variables": {}}),  # a required variable missing
        post({"query": RESERVE, "variables": {"input": {"lines": [_line(sku, 1)], "idempotencyKey": "x" * 5000}}}),
        post(reserve("-e", _line(sku, 1)), key="limited"),  # no checkout scope: FORBIDDEN
        post({"query": AVAILABILITY, "variables": {"skus": [sku, sku + "-NONE"]}}),
        post({"query": AVAILABILITY, "variables": {"skus": [sku]}}, key="limited"),  # storefront may read it
        post({"query": AVAILABILITY, "variables": {"skus": [f"C{i}" for i in range(COST_LIMIT + 10)]}}),
        post({"query": AVAILABILITY, "variables": {"skus": 7}}),  # one Int for a list of strings
        post({"query": AVAILABILITY, "variables": {"skus": [sku, "BOOM"]}}),  # a fault in the query
        post(reserve("-boom", _line(sku, 1))),  # a fault in the mutation
        post({"query": "query { availability(skuCodes: []) { skuCode nope } }"}),  # an unknown field
        post({"query": "query { availability(skuCodes: [] { skuCode } }"}),  # a syntax error
        post({"query": TWO_OPERATIONS, "variables": {"skus": [sku]}, "operationName": "Levels"}),
        post({"query": TWO_OPERATIONS, "variables": {"skus": [sku, "Q"]}, "operationName": "Codes"}),
        post({"query": TWO_OPERATIONS, "variables": {"skus": [sku]}}),  # which one? a request error
        post({"query": TWO_OPERATIONS, "variables": {"skus": [sku]}, "operationName": "Other"}),
        post({"query": "{ __typename }"}),
        post({"query": "{ __schema { queryType { name } } }"}),
        {"get": {"query": AVAILABILITY, "variables": json.dumps({"skus": [sku]})}, "as": "key"},
        {"get": {"query": RESERVE, "variables": json.dumps({"input": {}})}, "as": "key"},  # a mutation by GET: 405
        post({"query": ALIASED, "variables": {"a": {"lines": [_line(sku, 1)], "idempotencyKey": sku + "-g"}, "b": {}}}),
        post({"query": 'subscription { availabilityChanged(skuCodes: ["X"]) { skuCode } }'}),  # websockets only
        # inputs the flat coercion (app/graphql/inputs.py) reads itself, or leaves to graphql-core
        *(post(reserve_with(**changes)) for changes in _RESERVE_INPUTS),
        post({"query": RESERVE, "variables": {"input": [{"lines": [_line(sku, 1)], "idempotencyKey": sku}]}}),
        post({"query": RESERVE, "variables": {"input": "SKU"}}),
        post({"query": RESERVE, "variables": {"input": {"lines": _line(sku, 1), "idempotencyKey": sku + "-one"}}}),
        post({"query": RESERVE, "variables": {"input": {"lines": [_line(sku, 1) | {"no": 1}], "idempotencyKey": "n"}}}),
        post({"query": RESERVE, "variables": {"input": {"lines": [{"skuCode": sku}], "idempotencyKey": "n"}}}),
        post({"query": RESERVE, "variables": {"input": {"lines": [_line(sku, 1), None], "idempotencyKey": "n"}}}),
        *(post({"query": RECORD, "variables": {"input": [_event(sku, i, **changes)]}}) for i, changes in _EVENT_INPUTS),
        post({"query": RECORD, "variables": {"input": _event(sku, 90)}}),  # one event for a list of them
        post({"query": RECORD, "variables": {"input": [_event(sku, 91), _event(sku, 92, type="COUNTED")]}}),
        # holds until the rate limit (HOLDS_A_WINDOW) refuses them: RATE_LIMITED
        *(post(reserve(f"-r{n}", _line(sku, 1))) for n in range(HOLDS_A_WINDOW)),
    ]


def _normalised(text: str, sku: str, ids: dict[str, str]) -> str:
    for rid in re.findall(r'"id":"([^"]+)"', text):
        ids.setdefault(rid, f"R{len(ids)}")
        text = text.replace(rid, ids[rid])
    text = re.sub(r'"expiresAt":"[^"]+"', '"expiresAt":"T"', text)
    text = re.sub(r"retry in [0-9.]+ s", "retry in N s", text)  # the rate limit's window, as it runs out
    return text.replace(sku, "SKU")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What the service's JSON log handler writes (its formatter), captured."""
    configure_logging()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    # no penalty for a repeated too-costly request (each run refuses one); few holds per key a window
    settings = Settings(
        database_url=database_url,
        broadcast_url="memory://",
        max_query_cost=COST_LIMIT,
        cost_penalty_seconds=0,
        hold_rate_limit=HOLDS_A_WINDOW,
        hold_rate_window_seconds=30,
    )
    await create_test_key(database_url)  # Postgres refuses to start without one
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c, app.state.runtime.ctx


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    wanted = ("stockwire_graphql_operations_total", "stockwire_reserve_outcomes_total")
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name in wanted or (s.name == "stockwire_graphql_operation_seconds_count"):
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


async def _run(client: httpx.AsyncClient, database_url: str, sku: str, out: io.StringIO) -> dict[str, Any]:
    key = await create_test_key(database_url)
    limited = await create_test_key(database_url, frozenset({Scope.STOREFRONT}))
    ids: dict[str, str] = {}
    answers = []
    out.truncate(0)
    out.seek(0)
    before = _samples()
    for i, request in enumerate(_history(sku)):
        headers = {
            "Authorization": f"Bearer {key if request['as'] == 'key' else limited}",
            "X-Request-Id": f"history-{i}",  # the same in every run: masked faults quote it
        }
        if "get" in request:
            response = await client.get("/graphql", params=request["get"], headers=headers)
        else:
            response = await client.post("/graphql", json=request["body"], headers=headers)
        answers.append((response.status_code, response.headers["content-type"], _normalised(response.text, sku, ids)))
    logged = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return {
        "answers": answers,
        "metrics": _delta(before, _samples()),
        # every line but the access lines' durations, with the run's own key ids made alike
        "logs": [
            (
                r["logger"],
                r["level"],
                _normalised(r["event"], sku, ids),
                r.get("request_id"),
                "exception" in r,
                "traceback" if "exception" in r and "RuntimeError: boom" in r["exception"] else None,
                r.get("key_id") is not None,
            )
            for r in logged
        ],
    }


async def test_known_documents_answer_log_and_count_as_strawberrys_path(
    client: tuple[httpx.AsyncClient, Any], database_url: str, monkeypatch: pytest.MonkeyPatch, lines: io.StringIO
) -> None:
    c, ctx = client
    api = Api(c, ctx, await create_test_key(database_url))
    await catalogue(api, skus=["SKU-1", "SKU-2", "SKU-3", "SKU-4"])
    for sku in ("SKU-1", "SKU-2", "SKU-3", "SKU-4"):
        await receive(api, sku, "WH-1", 100)

    # faults: a query and a mutation raising what no client caused
    availability, reserve = queries.availability, reservations.reserve

    async def failing_availability(ctx: Any, codes: list[str]) -> Any:
        if "BOOM" in codes:
            raise RuntimeError("boom")
        return await availability(ctx, codes)

    async def failing_reserve(ctx: Any, request: Any) -> Any:
        if request.idempotency_key.endswith("-boom"):
            raise RuntimeError("boom")
        return await reserve(ctx, request)

    monkeypatch.setattr(queries, "availability", failing_availability)
    monkeypatch.setattr(reservations, "reserve", failing_reserve)
    known: list[str] = []
    execute_known = http_view.execute_known

    async def counted(*args: Any) -> Any:
        known.append(args[2])
        return await execute_known(*args)

    monkeypatch.setattr(http_view, "execute_known", counted)

    first = await _run(c, database_url, "SKU-3", lines)  # documents new to the schema: Strawberry's way
    assert len(known) < len(_history("X")) - 6  # the first of each document went Strawberry's way
    known.clear()
    on = await _run(c, database_url, "SKU-1", lines)
    # every document that validated ran as a known one: not the two that fail validation, the ambiguous
    # one, the unknown operationName, the mutation by GET nor the subscription by POST
    assert len(known) == len(_history("X")) - 6
    with monkeypatch.context() as off_switch:
        off_switch.setattr(SecureGraphQLView, "_known", lambda self, query, name: None)
        off = await _run(c, database_url, "SKU-2", lines)
    assert len(known) == len(_history("X")) - 6  # none more
    # and every variable coerced by graphql-core alone (no flat coercion): the same answers
    with monkeypatch.context() as off_switch:
        off_switch.setattr(limits, "coerce_flat_variables", lambda schema, operation, raw: ({}, raw))
        general = await _run(c, database_url, "SKU-4", lines)
    for i, (a, b) in enumerate(zip(on["answers"], general["answers"], strict=True)):
        assert a == b, (i, a, b)
    assert on["metrics"] == general["metrics"] and on["logs"] == general["logs"]

    for i, (a, b) in enumerate(zip(on["answers"], off["answers"], strict=True)):
        assert a == b, (i, a, b)
    assert on["answers"] == first["answers"]
    assert on["metrics"] == off["metrics"] and on["metrics"] == first["metrics"]
    assert on["logs"] == off["logs"]

    # and what they are: a sample of the history's answers
    answers = [json.loads(text) for _, _, text in on["answers"]]
    assert answers[0]["data"]["reserve"]["userErrors"] == [] and answers[1] == answers[0]
    assert answers[2]["data"]["reserve"]["userErrors"][0]["code"] == "IDEMPOTENCY_CONFLICT"
    assert "200 requested at WH-1, 98 available" in answers[3]["data"]["reserve"]["userErrors"][0]["message"]
    assert answers[5]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT" and "data" not in answers[5]
    assert answers[7]["data"]["reserve"]["userErrors"][0]["code"] == "INVALID_INPUT"
    assert answers[8]["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert answers[11]["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
    assert answers[13]["errors"][0] == {
        "message": "Unexpected error.",
        "locations": [{"line": 1, "column": 28}],
        "path": ["availability"],
        "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "history-13"},
    }
    assert answers[14]["errors"][0]["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "history-14"}
    assert answers[15]["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert answers[16]["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    assert answers[17]["data"]["availability"][0]["skuCode"] == "SKU" and answers[18]["data"]["unknownSkuCodes"] == [
        "Q"
    ]
    assert on["answers"][19][0] == 400 and on["answers"][24][0] == 405 and on["answers"][26][0] == 400
    assert answers[-1]["data"]["reserve"]["userErrors"][0]["code"] == "RATE_LIMITED"
    # the metrics of the known documents: one reserve answered OK per run (the first), its repeat too
    assert on["metrics"][("stockwire_reserve_outcomes_total", (("code", "OK"),))] >= 2
    assert (
        on["metrics"][
            (
                "stockwire_graphql_operations_total",
                (("operation", "reserve"), ("outcome", "error"), ("type", "mutation")),
            )
        ]
        >= 3
    )
    # the faults were logged once each, with the request id, the key and the traceback
    faults = [r for r in on["logs"] if r[1] == "error"]
    assert [(r[3], r[4], r[5], r[6]) for r in faults] == [
        ("history-13", True, "traceback", True),
        ("history-14", True, "traceback", True),
    ]


def test_the_schema_has_no_extension_known_documents_would_skip() -> None:
    """execute_known repeats by hand what these extensions do after validation; a new extension (or a
    resolve middleware, results, directives) must be repeated there too before this list changes."""
    from strawberry.extensions import ParserCache, SchemaExtension

    from app.graphql.document_cache import ValidationByQuery
    from app.graphql.errors import ClientErrors, OperationLimits
    from app.graphql.known_documents import RememberDocuments
    from app.graphql.schema import build_schema
    from app.observability.extension import Observe

    schema = build_schema()
    extensions = schema.get_extensions()
    assert [type(e) for e in extensions] == [
        RememberDocuments,
        OperationLimits,
        ParserCache,
        ValidationByQuery,
        ClientErrors,
        Observe,
    ]
    for extension in extensions:
        assert type(extension).resolve is SchemaExtension.resolve
        assert type(extension).get_results is SchemaExtension.get_results
    assert not schema.directives and not schema.config.disable_field_suggestions
    assert schema.known_documents is not None
