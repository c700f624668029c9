"""Fuzz (hypothesis): random values into every argument of every root query and mutation over HTTP.

The root fields and their arguments come from the served schema, so a new operation is fuzzed
without a line here. Each example calls one field with values drawn for its arguments' types (so
most get past coercion and reach the resolvers and the database) or, now and then, any JSON at all:
strings of every Unicode category (NUL and lone surrogates included), integers far past 64 bits,
floats, dates from year 1 to 9999 with and without a time zone, nested lists and objects.

Every answer must be typed: HTTP 200 or 400 (413 for a body over the limit), every error with an
`extensions.code` that is not INTERNAL_SERVER_ERROR, and nothing logged at ERROR (a client's mistake
is no fault of ours).
The CI run is modest (profile `fuzz-ci`); `STOCKWIRE_FUZZ_PROFILE=fuzz-deep` runs longer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    get_named_type,
    is_leaf_type,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.graphql.schema import schema
from app.main import create_app
from app.settings import Settings
from tests.conftest import create_test_key

settings.register_profile(
    "fuzz-ci", max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "fuzz-deep", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PROFILE = settings.get_profile(os.environ.get("STOCKWIRE_FUZZ_PROFILE", "fuzz-ci"))

GRAPHQL_RESPONSE = "application/graphql-response+json"
# a failing example with 50 copies of an input can print a large repr; hypothesis warns, not fails
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


# -- what to call ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RootField:
    operation: str  # query or mutation
    name: str
    field: GraphQLField

    def __repr__(self) -> str:  # hypothesis prints the failing example
        return f"{self.operation}.{self.name}"


def _root_fields() -> list[RootField]:
    served = schema._schema
    found = []
    for operation, root in (("query", served.query_type), ("mutation", served.mutation_type)):
        assert root is not None
        found += [RootField(operation, name, f) for name, f in root.fields.items()]
    return found


ROOT_FIELDS = _root_fields()


def _type_text(t: GraphQLInputType) -> str:
    return str(t)


def document(root: RootField) -> str:
    """`query($a: T, ...) { field(a: $a, ...) { __typename } }` for every argument of the field."""
    args = root.field.args
    variables = ", ".join(f"${name}: {_type_text(a.type)}" for name, a in args.items())
    passed = ", ".join(f"{name}: ${name}" for name in args)
    selection = "" if is_leaf_type(get_named_type(root.field.type)) else " { __typename }"
    head = f"{root.operation}({variables})" if args else root.operation
    call = f"{root.name}({passed})" if args else root.name
    return f"{head} {{ {call}{selection} }}"


# -- what to send -----------------------------------------------------------------------------------

# every Unicode category, surrogates (Cs) and NUL included; some ASCII so that codes sometimes exist
ANY_CHARACTER = st.characters(codec=None, categories=None, exclude_categories=())
HOSTILE_TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=30),
    st.sampled_from(
        ["", "SKU-1", "WH-1", "\x00", "a\x00b", "\ud800", "\udfff", "²", "9" * 30, "'; DROP TABLE skus; --"]
    ),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\u0000"]), st.integers(99, 202)),
)
HUGE_INT = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**80), 2**80), st.sampled_from([0, -1, 2**63]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
TIMES = st.one_of(
    st.builds(
        lambda y, mo, d, h, zone: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:30:00{zone}",
        st.integers(1, 9999),
        st.integers(1, 12),
        st.integers(1, 28),
        st.integers(0, 23),
        st.sampled_from(["", "Z", "+01:00", "-01:00", "+14:00", "-12:00"]),
    ),
    st.sampled_from(["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "0001-01-01T00:00:00Z", "2026-01-01"]),
    HOSTILE_TEXT,
)
DECIMALS = st.one_of(st.sampled_from(["1e999999", "-1e-999999", "NaN", "Infinity", "0.1", "1" * 40]), HUGE_INT, FLOATS)
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), HUGE_INT, FLOATS, HOSTILE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(HOSTILE_TEXT, inner, max_size=4)),
    max_leaves=12,
)


def value_for(t: GraphQLInputType, depth: int = 0) -> st.SearchStrategy[Any]:
    """A value shaped like `t` (mostly), with hostile leaves; now and then any JSON at all."""
    return st.one_of(_shaped(t, depth), ANY_JSON) if depth == 0 else _shaped(t, depth)


def _shaped(t: GraphQLInputType, depth: int) -> st.SearchStrategy[Any]:
    if isinstance(t, GraphQLNonNull):
        return _shaped(t.of_type, depth)
    if isinstance(t, GraphQLList):
        item = _shaped(t.of_type, depth + 1)
        copies = 50 if depth == 0 else 3  # duplicates: de-duplicated, but counted by the cost limit
        return st.one_of(st.lists(item, max_size=4), st.lists(item, min_size=1, max_size=1).map(lambda v: v * copies))
    if isinstance(t, GraphQLEnumType):
        return st.one_of(st.sampled_from(list(t.values)), HOSTILE_TEXT)
    if isinstance(t, GraphQLInputObjectType):
        if depth > 3:
            return st.just({})
        fields = {name: _shaped(f.type, depth + 1) for name, f in t.fields.items()}
        required = {name for name, f in t.fields.items() if isinstance(f.type, GraphQLNonNull)}
        return st.fixed_dictionaries(
            {name: s for name, s in fields.items() if name in required},
            optional={name: s for name, s in fields.items() if name not in required},
        )
    assert isinstance(t, GraphQLScalarType), t
    return {
        "String": HOSTILE_TEXT,
        "ID": HOSTILE_TEXT,
        "Int": HUGE_INT,
        "Float": FLOATS,
        "Boolean": st.booleans(),
        "DateTime": TIMES,
        "Decimal": DECIMALS,
        "JSON": ANY_JSON,
    }.get(t.name, ANY_JSON)


@st.composite
def calls(draw: st.DrawFn) -> tuple[RootField, dict[str, Any]]:
    root = draw(st.sampled_from(ROOT_FIELDS))
    arguments: dict[str, GraphQLArgument] = root.field.args
    variables = {name: draw(value_for(a.type)) for name, a in arguments.items()}
    return root, variables


# -- the server --------------------------------------------------------------------------------------


@dataclass
class Served:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    """The app in this thread's own event loop: hypothesis runs each example synchronously."""
    loop = asyncio.new_event_loop()
    key = loop.run_until_complete(create_test_key(database_url))
    app = create_app(Settings(database_url=database_url, broadcast_url="memory://"))
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {key}", "Accept": GRAPHQL_RESPONSE},
        timeout=30,
    )
    try:
        yield Served(loop, client)
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


def _typed(response: httpx.Response) -> list[str]:
    """The error codes of a typed answer; fails the test on anything else."""
    assert response.status_code in (200, 400, 413), response.text[:2000]
    body = response.json()
    if response.status_code == 413:  # the body limit, whatever the arguments
        assert body["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    codes = []
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert isinstance(code, str) and code, error
        assert code != "INTERNAL_SERVER_ERROR", body
        codes.append(code)
    if response.status_code == 200:
        assert "data" in body, body
    return codes


def test_every_root_field_is_fuzzed() -> None:
    names = {f"{r.operation}.{r.name}" for r in ROOT_FIELDS}
    assert {"query.availability", "mutation.reserve", "mutation.recordInventoryEvents"} <= names
    assert all(document(r).count("$") == 2 * len(r.field.args) for r in ROOT_FIELDS)


@PROFILE
@given(call=calls())
def test_any_argument_gets_a_typed_answer(
    served: Served, caplog: pytest.LogCaptureFixture, call: tuple[RootField, dict[str, Any]]
) -> None:
    root, variables = call
    caplog.clear()
    body = json.dumps({"query": document(root), "variables": variables})  # surrogates as \\ud800 escapes
    with caplog.at_level(logging.ERROR):
        response = served.loop.run_until_complete(
            served.client.post("/graphql", content=body, headers={"Content-Type": "application/json"})
        )
    codes = _typed(response)
    event(f"{root.name}: {','.join(sorted(set(codes))) or 'answered'}")  # --hypothesis-show-statistics
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not faults, [(r.name, r.getMessage()) for r in faults]
