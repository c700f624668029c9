"""Scopes: every operation declares one (a walk over the whole schema), each kind of key reaches what
its scope allows and is FORBIDDEN elsewhere, keys made and revoked by the admin mutation, idempotency
per key, and the per-key rate limit on the mutations that hold stock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from strawberry.types.base import StrawberryList, StrawberryObjectDefinition, StrawberryOptional, get_object_definition

from app.graphql.permissions import (
    FIELDS,
    HOLDS,
    REQUIRED,
    STOREFRONT_FIELDS,
    graphql_name,
    required_scopes,
    root_fields,
)
from app.graphql.schema import build_schema, schema
from app.main import create_app
from app.security.ratelimit import TokenBucketLimiter
from app.security.scopes import ALL_SCOPES, Scope
from app.settings import Settings
from tests.conftest import Api, create_test_key
from tests.helpers import RECORD, RESERVE, catalogue, event, level, receive, reserve

# -- the schema walk ----------------------------------------------------------------------------


def _roots() -> list[tuple[str, Any]]:
    types = [schema.get_type_by_name(n) for n in ("Query", "Mutation", "Subscription")]
    classes = [t.origin for t in types if t is not None]  # type: ignore[union-attr]
    return root_fields(*classes)


def test_every_operation_of_the_served_schema_declares_a_scope() -> None:
    roots = _roots()
    assert len(roots) >= 25  # the walk found the schema (queries, mutations and subscriptions)
    missing = [coordinate for coordinate, f in roots if not required_scopes(f)]
    assert missing == [], f"operations without a scope (add them to REQUIRED in app/graphql/permissions.py): {missing}"


def test_the_scope_table_names_only_operations_that_exist() -> None:
    served = {coordinate for coordinate, _ in _roots()}
    assert set(REQUIRED) - served == set(), "REQUIRED names operations the schema does not serve"
    assert served >= HOLDS


def test_an_operation_missing_from_the_table_is_refused_to_every_key() -> None:
    import strawberry

    from app.graphql.permissions import secure

    @strawberry.type
    class Query:
        @strawberry.field
        def undeclared(self) -> int:
            return 1

    secure(Query)
    (coordinate, f), *_ = root_fields(Query)
    assert coordinate == "Query.undeclared"
    assert required_scopes(f) == frozenset()  # fails closed: no key carries "no scope"


# -- the schema walk, field by field ------------------------------------------------------------------


def _object_of(t: Any) -> StrawberryObjectDefinition | None:
    while isinstance(t, StrawberryOptional | StrawberryList):
        t = t.of_type
    return get_object_definition(t)


def _readable(scope: Scope) -> set[str]:
    """Every field (Type.field) a key with only this scope can read: from each operation it may call,
    through every object type's fields, except those FIELDS keeps from it (and what lies beneath)."""
    readable: set[str] = set()

    def walk(definition: StrawberryObjectDefinition) -> None:
        for f in definition.fields:
            coordinate = f"{definition.name}.{graphql_name(f)}"
            if coordinate in readable or scope not in FIELDS.get(coordinate, frozenset({scope})):
                continue
            readable.add(coordinate)
            child = _object_of(f.type)
            if child is not None:
                walk(child)

    for coordinate, f in _roots():
        returned = _object_of(f.type)
        if scope in REQUIRED.get(coordinate, frozenset()) and returned is not None:
            walk(returned)
    return readable


def _every_field() -> set[str]:
    found: set[str] = set()
    for _, f in _roots():
        stack = [_object_of(f.type)]
        while stack:
            definition = stack.pop()
            if definition is None or any(c.startswith(f"{definition.name}.") for c in found):
                continue
            for field in definition.fields:
                found.add(f"{definition.name}.{graphql_name(field)}")
                stack.append(_object_of(field.type))
    return found


def test_a_storefront_key_reads_exactly_the_fields_decided_for_a_browser() -> None:
    """A new field on a type a storefront operation returns fails here until it is put in
    STOREFRONT_FIELDS (a browser may read it) or FIELDS (with the scopes that may)."""
    assert _readable(Scope.STOREFRONT) == set(STOREFRONT_FIELDS)


@pytest.mark.parametrize("scope", list(Scope), ids=lambda s: s.value)
def test_no_scope_reaches_a_field_kept_from_it(scope: Scope) -> None:
    readable = _readable(scope)
    kept = {c for c, needed in FIELDS.items() if scope not in needed}
    assert readable & kept == set()
    if scope is Scope.ROUTER:  # stockLevels and routing need the quantities
        assert set(FIELDS) - {"Availability.oversold", "Availability.explain"} <= readable


def test_the_field_tables_name_only_fields_that_exist() -> None:
    every = _every_field()
    assert len(every) > 100  # the walk went through the whole schema
    assert set(FIELDS) - every == set() and set(STOREFRONT_FIELDS) - every == set()
    assert set(FIELDS) & set(STOREFRONT_FIELDS) == set()
    internals = {"onHand", "committed", "reserved", "unavailable", "safetyStock", "incoming", "oversold"}
    assert {f"StockLevel.{n}" for n in internals} | {"Availability.oversold", "Availability.explain"} <= set(FIELDS)
    assert all(Scope.STOREFRONT not in needed for needed in FIELDS.values())


LEVEL_SELECTION = "locations { %s }"
BROWSER = """query { availability(skuCodes: ["SKU-1"]) { skuCode channelCode available version
  locations { skuCode locationCode available version updatedAt cursor } } }"""


def _selecting(coordinate: str) -> str:
    """An availability query that selects this field (and only it besides the SKU code)."""
    type_name, name = coordinate.split(".")
    inner = f"{name} {{ pool }}" if coordinate == "Availability.explain" else name
    selection = inner if type_name == "Availability" else LEVEL_SELECTION % inner
    return f'query {{ availability(skuCodes: ["SKU-1"]) {{ skuCode {selection} }} }}'


async def test_a_storefront_key_reads_availability_per_location_but_no_internals(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    browser = api.as_key(await api.new_key(Scope.STOREFRONT))
    (row,) = (await browser.ok(BROWSER))["availability"]
    assert (row["available"], [(lv["locationCode"], lv["available"]) for lv in row["locations"]]) == (5, [("WH-1", 5)])

    fragments = {
        "inline": 'query { availability(skuCodes: ["SKU-1"]) { locations { ... on StockLevel { onHand } } } }',
        "named": 'query { availability(skuCodes: ["SKU-1"]) { ...A } } fragment A on Availability { oversold }',
        "aliased": 'query { availability(skuCodes: ["SKU-1"]) { locations { stock: committed } } }',
    }
    for query in [_selecting(c) for c in sorted(FIELDS)] + list(fragments.values()):
        response = await browser.raw(query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["data"] is None, query
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "FORBIDDEN", query
        assert error["extensions"]["requiredScopes"] == ["admin", "router"]
        assert all(f in FIELDS for f in error["extensions"]["fields"])

    # with the router scope too, the same key reads what lies behind the figure
    ops = api.as_key(await api.new_key(Scope.STOREFRONT, Scope.ROUTER))
    for coordinate in sorted(FIELDS):
        assert "errors" not in (await ops.raw(_selecting(coordinate))).json(), coordinate
    (row,) = (await ops.ok(_selecting("StockLevel.onHand")))["availability"]
    assert row["locations"] == [{"onHand": 5}]


# -- what each kind of key may do -------------------------------------------------------------------

SAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "Query.availability": ('query { availability(skuCodes: ["SKU-1"]) { available } }', {}),
    "Query.stockLevels": ("query { stockLevels { skuCode } }", {}),
    "Query.reservations": ('query { reservations(cartRef: "c") { id } }', {}),
    "Query.inventoryEvents": ("query { inventoryEvents { nodes { type } } }", {}),
    "Query.apiKeys": ("query { apiKeys { prefix } }", {}),
    "Query.channels": ("query { channels { code } }", {}),
    "Mutation.reserve": (RESERVE, {"input": {"lines": [{"skuCode": "SKU-1", "quantity": 1}], "idempotencyKey": "s"}}),
    "Mutation.releaseReservation": ('mutation { releaseReservation(id: "x") { userErrors { code } } }', {}),
    "Mutation.recordInventoryEvents": (RECORD, {"input": []}),
    "Mutation.upsertSkus": ('mutation { upsertSkus(input: [{code: "SKU-9", name: "n"}]) { userErrors { code } } }', {}),
    "Mutation.createApiKey": (
        'mutation { createApiKey(input: {name: "n", scopes: [STOREFRONT]}) { userErrors { code } } }',
        {},
    ),
}


@pytest.mark.parametrize("scope", list(Scope), ids=lambda s: s.value)
async def test_each_scope_reaches_exactly_its_operations(api: Api, scope: Scope) -> None:
    await catalogue(api)
    key = await api.new_key(scope)
    client = api.as_key(key)
    for coordinate, (query, variables) in SAMPLES.items():
        response = await client.raw(query, **variables)
        assert response.status_code == 200, response.text
        body = response.json()
        codes = [e["extensions"]["code"] for e in body.get("errors", [])]
        if scope in REQUIRED[coordinate]:
            assert codes == [], (coordinate, body)
        else:
            assert codes == ["FORBIDDEN"], (coordinate, body)
            assert body["data"] is None
            assert scope.value not in body["errors"][0]["extensions"]["requiredScopes"]


async def test_admin_implies_no_other_scope(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    admin = api.as_key(await api.new_key(Scope.ADMIN))
    for query, variables in (SAMPLES["Mutation.reserve"], (RECORD, {"input": [event("RECEIVED", "SKU-1", "WH-1", 1)]})):
        body = (await admin.raw(query, **variables)).json()
        assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    assert (await level(api, "SKU-1", "WH-1"))["onHand"] == 5
    assert await api.sql("SELECT id FROM reservations") == []


# -- keys over GraphQL -----------------------------------------------------------------------------

CREATE = """mutation($name: String!, $scopes: [ApiScope!]!) {
  createApiKey(input: {name: $name, scopes: $scopes}) { secret apiKey { id prefix scopes } userErrors { code } } }"""
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { revokedAt } userErrors { code } } }"


async def test_an_admin_creates_a_key_that_works_then_revokes_it(api: Api) -> None:
    await catalogue(api)
    admin = api.as_key(await api.new_key(Scope.ADMIN))
    made = (await admin.ok(CREATE, name="storefront web", scopes=["STOREFRONT"]))["createApiKey"]
    assert made["userErrors"] == [] and made["apiKey"]["scopes"] == ["STOREFRONT"]
    secret = made["secret"]
    assert secret.startswith(f"sw_{made['apiKey']['prefix']}_")
    # stored hashed: the secret is nowhere in the database
    rows = await api.sql("SELECT * FROM api_keys")
    assert all(secret not in [str(v) for v in row] for row in rows)
    storefront = api.as_key(secret)
    await storefront.ok('query { availability(skuCodes: ["SKU-1"]) { available } }')
    listed = (await admin.ok("query { apiKeys { prefix name } }"))["apiKeys"]
    assert {"prefix": made["apiKey"]["prefix"], "name": "storefront web"} in listed
    assert "secret" not in str(listed) and secret not in str(listed)

    revoked = (await admin.ok(REVOKE, id=made["apiKey"]["id"]))["revokeApiKey"]
    assert revoked["userErrors"] == [] and revoked["apiKey"]["revokedAt"] is not None
    response = await storefront.raw('query { availability(skuCodes: ["SKU-1"]) { available } }')
    assert response.status_code == 401  # at once in the process that revoked it
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_key_input_errors_are_user_errors(api: Api) -> None:
    admin = api.as_key(await api.new_key(Scope.ADMIN))
    no_scopes = (await admin.ok(CREATE, name="x", scopes=[]))["createApiKey"]
    assert (no_scopes["secret"], [e["code"] for e in no_scopes["userErrors"]]) == (None, ["INVALID_INPUT"])
    unknown = (await admin.ok(REVOKE, id="no-such-key"))["revokeApiKey"]
    assert [e["code"] for e in unknown["userErrors"]] == ["API_KEY_NOT_FOUND"]
    assert len(await api.sql("SELECT id FROM api_keys")) == 2  # the fixture's and this admin key


async def test_idempotency_keys_are_per_api_key(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    a = api.as_key(await api.new_key(Scope.CHECKOUT, name="a"))
    b = api.as_key(await api.new_key(Scope.CHECKOUT, name="b"))
    line = [{"skuCode": "SKU-1", "quantity": 2, "locationCode": "WH-1"}]
    first = await reserve(a, line, key="order-1")
    again = await reserve(a, line, key="order-1")
    other = await reserve(b, [{"skuCode": "SKU-1", "quantity": 1, "locationCode": "WH-1"}], key="order-1")
    assert first["reservation"]["id"] == again["reservation"]["id"]
    assert other["userErrors"] == [] and other["reservation"]["id"] != first["reservation"]["id"]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 3


# -- the per-key rate limit on holds -----------------------------------------------------------------


@pytest.fixture
async def limited(tmp_path: Path, new_database: Callable[[], str]) -> AsyncIterator[Api]:
    """The app with a hold limit of 3 per 10 s and a clock the test moves."""

    url = new_database()
    settings = Settings(database_url=url, hold_rate_limit=3, hold_rate_window_seconds=10)
    key = await create_test_key(url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            api = Api(client, app.state.runtime.ctx, key)
            api.now = [0.0]  # type: ignore[attr-defined]
            app.state.runtime.security.holds.clock = lambda: api.now[0]  # type: ignore[attr-defined]
            yield api


async def test_holds_beyond_the_rate_limit_are_refused_with_rate_limited(limited: Api) -> None:
    await catalogue(limited)
    await receive(limited, "SKU-1", "WH-1", 100)
    one = [{"skuCode": "SKU-1", "quantity": 1, "locationCode": "WH-1"}]
    for _ in range(3):
        assert (await reserve(limited, one))["userErrors"] == []
    refused = await reserve(limited, one)
    assert refused["reservation"] is None
    assert [e["code"] for e in refused["userErrors"]] == ["RATE_LIMITED"]
    assert "retry in" in refused["userErrors"][0]["message"]
    assert (await level(limited, "SKU-1", "WH-1"))["reserved"] == 3  # the refused call held nothing
    # another key has its own bucket
    other = limited.as_key(await limited.new_key(Scope.CHECKOUT))
    assert (await reserve(other, one))["userErrors"] == []
    # the bucket refills: 3 per 10 s is one every 3.33 s
    limited.now[0] += 3.4  # type: ignore[attr-defined]
    assert (await reserve(limited, one))["userErrors"] == []
    assert [e["code"] for e in (await reserve(limited, one))["userErrors"]] == ["RATE_LIMITED"]
    # release and commit do not hold stock, so they are not limited
    rid = (await limited.sql("SELECT id FROM reservations LIMIT 1"))[0][0]
    released = await limited.ok("mutation($id: ID!) { releaseReservation(id: $id) { userErrors { code } } }", id=rid)
    assert released["releaseReservation"]["userErrors"] == []


async def test_external_holds_share_the_hold_rate_limit(limited: Api) -> None:
    await catalogue(limited)
    await receive(limited, "SKU-1", "WH-1", 100)
    query = """mutation($input: [ExternalHoldInput!]!) { recordExternalHolds(input: $input) {
      results { index status } userErrors { code } } }"""

    def place(n: int) -> dict[str, Any]:
        hold = {"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": 1}
        return {"input": [{"source": "amazon", "externalId": f"h{n}", "action": "PLACE", **hold}]}

    for n in range(3):
        assert (await limited.ok(query, **place(n)))["recordExternalHolds"]["userErrors"] == []
    refused = (await limited.ok(query, **place(3)))["recordExternalHolds"]
    assert refused == {"results": [], "userErrors": [{"code": "RATE_LIMITED"}]}
    assert (await level(limited, "SKU-1", "WH-1"))["reserved"] == 3


async def test_a_key_without_the_scope_is_forbidden_before_it_spends_its_rate(limited: Api) -> None:
    await catalogue(limited)
    storefront = limited.as_key(await limited.new_key(Scope.STOREFRONT))
    one = {"input": {"lines": [{"skuCode": "SKU-1", "quantity": 1}], "idempotencyKey": "x"}}
    for _ in range(5):
        body = (await storefront.raw(RESERVE, **one)).json()
        assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]


def test_the_default_limits_let_a_busy_checkout_through() -> None:
    s = Settings()
    assert s.hold_rate_limit >= 1000 and s.hold_rate_window_seconds <= 10
    assert s.max_units_per_reservation >= 1000
    now = [0.0]
    limiter = TokenBucketLimiter(s.hold_rate_limit, s.hold_rate_window_seconds, clock=lambda: now[0])
    allowed = 0
    for i in range(1000):  # 1,000 holds spread over 10 s
        now[0] = i * 0.01
        allowed += limiter.allow("checkout")
    assert allowed == 1000


def test_the_limiter_refuses_a_runaway_key_and_forgets_nothing_else() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(10, 10.0, clock=lambda: now[0])
    results = [limiter.allow("runaway") for _ in range(15)]
    assert results == [True] * 10 + [False] * 5
    assert limiter.allow("calm") is True
    assert limiter.retry_after("runaway") == pytest.approx(1.0)
    now[0] = 1.0
    assert limiter.allow("runaway") is True
    assert TokenBucketLimiter(0, 10.0).allow("anyone") is True  # 0: unlimited


async def test_max_units_per_reservation_is_a_setting(tmp_path: Path, new_database: Callable[[], str]) -> None:

    url = new_database()
    key = await create_test_key(url)
    app = create_app(Settings(database_url=url, max_units_per_reservation=5))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            api = Api(client, app.state.runtime.ctx, key)
            await catalogue(api)
            await receive(api, "SKU-1", "WH-1", 100)
            refused = await reserve(api, [{"skuCode": "SKU-1", "quantity": 6}])
            assert [e["code"] for e in refused["userErrors"]] == ["INVALID_QUANTITY"]
            assert (await reserve(api, [{"skuCode": "SKU-1", "quantity": 5}]))["userErrors"] == []


def test_scopes_are_the_five_the_issue_names() -> None:
    assert {s.value for s in ALL_SCOPES} == {"storefront", "checkout", "router", "integration", "admin"}
    by_scope = {s: sorted(c for c, needed in REQUIRED.items() if s in needed) for s in Scope}
    assert {"Query.availability", "Subscription.availabilityChanged"} <= set(by_scope[Scope.STOREFRONT])
    assert {
        f"Mutation.{m}" for m in ("reserve", "commitReservation", "releaseReservation", "extendReservation")
    } <= set(by_scope[Scope.CHECKOUT])
    assert {"Query.stockLevels", "Query.routeOrder", "Mutation.routeAndReserve"} <= set(by_scope[Scope.ROUTER])
    assert {"Mutation.recordInventoryEvents", "Mutation.importSnapshot"} <= set(by_scope[Scope.INTEGRATION])
    assert {
        "Mutation.upsertSkus",
        "Mutation.upsertLocations",
        "Mutation.upsertChannels",
        "Mutation.createApiKey",
        "Mutation.revokeApiKey",
    } <= set(by_scope[Scope.ADMIN])


def test_a_schema_built_twice_is_secured_once() -> None:
    build_schema(Settings())
    for _, f in _roots():
        checks = [e for e in f.extensions if type(e).__name__ == "ScopeCheck"]
        assert len(checks) == 1
