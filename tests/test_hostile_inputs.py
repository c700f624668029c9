"""Hostile and malformed inputs, over HTTP and websockets, against a live server: each gets its
documented error, never a 5xx (nor an INTERNAL_SERVER_ERROR or a websocket close 1011), and the
database is row-for-row identical before and after.

One live server on its own PostgreSQL database for the module runs every case. Its
keys are cached for an hour (STOCKWIRE_AUTH_CACHE_SECONDS) so that no lookup refreshes a key's
`last_used_at` while the cases run: every row of every table is compared, with nothing left out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.db.engine import Database
from app.db.tables import metadata
from app.security import keys
from app.security.scopes import Scope
from tests.conftest import create_test_key
from tests.helpers import COMMIT, EXTEND, RECORD, RELEASE, RESERVE, UPSERT_LOCATIONS, UPSERT_SKUS
from tests.live import Server, start_server, stop_server

pytestmark = pytest.mark.slow  # live server processes

GRAPHQL_RESPONSE = "application/graphql-response+json"
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
MAX_BATCH = 5  # the servers' max_batch_size, so an over-size batch stays small
MAX_SUBSCRIPTIONS = 2
MAX_RESPONSE = 16_384  # the servers' max_response_bytes: introspecting the schema answers more
TIMEOUT = 15.0
AVAILABILITY_Q = 'query { availability(skuCodes: ["SKU-1"]) { skuCode available } }'
AVAILABILITY_SUB = "subscription($s: [String!]) { availabilityChanged(skuCodes: $s) { skuCode available } }"


# -- the world every case runs against ----------------------------------------------------------


@dataclass
class World:
    server: Server
    url: str  # the server's database
    keys: dict[str, str]  # role -> key ("all", "storefront", "checkout", "admin", "revoked")
    log: Path  # the server's stderr: a client's error logs no traceback
    ids: dict[str, str] = field(default_factory=dict)  # reservation ids by state

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def headers(self, role: str | None = "all") -> dict[str, str]:
        h = {"Accept": GRAPHQL_RESPONSE, "Content-Type": "application/json"}
        if role is not None:
            h["Authorization"] = f"Bearer {self.keys[role]}"
        return h


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    db = Database(url)
    try:
        async with db.read() as conn:
            return {
                t.name: sorted((tuple(r) for r in await conn.execute(text(f"SELECT * FROM {t.name}"))), key=repr)
                for t in metadata.sorted_tables
            }
    finally:
        await db.dispose()


def _post(client: httpx.Client, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body["data"]


def _reserve(client: httpx.Client, key: str, ttl: int = 900, quantity: int = 1) -> str:
    lines = [{"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": quantity}]
    data = _post(client, RESERVE, input={"lines": lines, "idempotencyKey": key, "ttlSeconds": ttl})
    assert data["reserve"]["userErrors"] == [], data
    rid: str = data["reserve"]["reservation"]["id"]
    return rid


async def _extra_keys(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        made = {
            role: (await keys.create_key(db, role, [scope])).secret
            for role, scope in (
                ("storefront", Scope.STOREFRONT),
                ("checkout", Scope.CHECKOUT),
                ("admin", Scope.ADMIN),
                ("revoked", Scope.CHECKOUT),
            )
        }
        revoked = keys.prefix_of(made["revoked"])
        assert revoked is not None
        await keys.revoke_key(db, revoked)  # before the server ever sees it
        return made
    finally:
        await db.dispose()


def _world(url: str, log: Path) -> Iterator[World]:
    all_key = asyncio.run(create_test_key(url))
    roles = {"all": all_key, **asyncio.run(_extra_keys(url))}
    log_file = log.open("wb")
    server = start_server(
        url,
        key=all_key,
        log=log_file,
        auth_cache_seconds="3600",
        max_batch_size=str(MAX_BATCH),
        max_subscriptions_per_connection=str(MAX_SUBSCRIPTIONS),
        max_response_bytes=str(MAX_RESPONSE),
        allowed_origins="https://shop.example.com",
    )
    try:
        world = World(server, url, roles, log)
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=TIMEOUT) as client:
            skus = [{"code": c, "name": c} for c in ("SKU-1", "SKU-2")]
            assert _post(client, UPSERT_SKUS, input=skus)["upsertSkus"]["userErrors"] == []
            locs = [{"code": c, "name": c, "kind": "WAREHOUSE"} for c in ("WH-1", "WH-2")]
            assert _post(client, UPSERT_LOCATIONS, input=locs)["upsertLocations"]["userErrors"] == []
            events = [
                {
                    "source": "erp",
                    "externalId": f"seed-{sku}-{loc}",
                    "type": "RECEIVED",
                    "skuCode": sku,
                    "locationCode": loc,
                    "quantity": 10,
                    "occurredAt": "2026-01-01T09:00:00Z",
                }
                for sku in ("SKU-1", "SKU-2")
                for loc in ("WH-1", "WH-2")
            ]
            assert _post(client, RECORD, input=events)["recordInventoryEvents"]["userErrors"] == []
            world.ids["active"] = _reserve(client, "seed-active")
            world.ids["committed"] = _reserve(client, "seed-committed")
            assert (
                _post(client, COMMIT, id=world.ids["committed"], orderRef="o-1")["commitReservation"]["userErrors"]
                == []
            )
            world.ids["released"] = _reserve(client, "seed-released")
            assert _post(client, RELEASE, id=world.ids["released"])["releaseReservation"]["userErrors"] == []
            world.ids["expired"] = _reserve(client, "seed-expired", ttl=1)
            for role in ("storefront", "checkout", "admin"):
                # a key's first use stamps its last_used_at: done here, so no case is blamed for it
                used = client.post("/graphql", json={"query": "{ __typename }"}, headers=world.headers(role))
                assert used.status_code == 200, used.text
        _settle(url)
        yield world
    finally:
        stop_server(server)
        log_file.close()


def _settle(url: str) -> None:
    """Waits until the sweeper has released the expired hold and nothing moves any more (two
    snapshots half a second apart agree): the cases compare snapshots, so nothing may be in flight."""
    deadline = time.monotonic() + 30
    previous = None
    while time.monotonic() < deadline:
        current = asyncio.run(snapshot(url))
        swept = not any("ACTIVE" in row and "seed-expired" in row for row in current["reservations"])
        if swept and current == previous:
            return
        previous = current
        time.sleep(0.5)
    raise AssertionError("the seeded database did not settle")


@pytest.fixture(scope="module")
def world(new_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(new_database(), tmp_path_factory.mktemp("hostile") / "server.log")


# -- the HTTP cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """One request and what it must get back. `body`: JSON to send, or raw bytes; `role`: the key."""

    name: str
    body: Any
    status: int
    code: str  # the userError code (status 200 with data) or the GraphQL error's extensions.code
    role: str | None = "all"
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    postgres: bool = False  # no effect any more: every case runs on PostgreSQL


def gql(query: str, **variables: Any) -> dict[str, Any]:
    return {"query": query, "variables": variables}


def reserve(*lines: tuple[str, int, str | None], key: str = "hostile", **extra: Any) -> dict[str, Any]:
    given = [{"skuCode": s, "quantity": q, **({"locationCode": loc} if loc else {})} for s, q, loc in lines]
    return gql(RESERVE, input={"lines": given, "idempotencyKey": key, **extra})


def event(**overrides: Any) -> dict[str, Any]:
    e = {
        "source": "erp",
        "externalId": "hostile-1",
        "type": "RECEIVED",
        "skuCode": "SKU-1",
        "locationCode": "WH-1",
        "quantity": 1,
        "occurredAt": "2026-01-02T09:00:00Z",
    }
    e.update(overrides)
    return e


# The schema has no cycles (its deepest selection is 5 levels), so depth bombs come through
# introspection, which has a limit of its own; test_security_http shows max_query_depth at work.
ALIAS_BOMB = "query { " + " ".join(f'a{i}: availability(skuCodes: ["SKU-1"]) {{ available }}' for i in range(30)) + " }"
TOKEN_BOMB = "query { availability(skuCodes: [" + ", ".join('"SKU-1"' for _ in range(5000)) + "]) { available } }"
INTROSPECTION_BOMB = "query { __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
NESTED_JSON = b'{"query": "{ __typename }", "variables": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
TEN_MB = b'{"query": "query { __typename }", "padding": "' + b"x" * (10 * 1024 * 1024) + b'"}'
RESERVE_INLINE_HUGE = (
    'mutation { reserve(input: {idempotencyKey: "k", lines: [{skuCode: "SKU-1", quantity: 99999999999}]}) '
    "{ userErrors { code } } }"
)
TYPE_BOMB = 'query { __type(name: "Query") { fields { type { fields { type { fields { name } } } } } } }'
WIDE_LIST = [f"SKU-{i}" for i in range(40_000)]

# ids of seeded reservations, filled in per case from the world: "{active}" etc.
HTTP_CASES = [
    # quantities
    Http("negative quantity", reserve(("SKU-1", -1, "WH-1")), 200, "INVALID_QUANTITY", postgres=True),
    Http("zero quantity", reserve(("SKU-1", 0, "WH-1")), 200, "INVALID_QUANTITY"),
    Http("quantity beyond Int (inline)", gql(RESERVE_INLINE_HUGE), 400, "GRAPHQL_VALIDATION_FAILED"),
    Http("quantity beyond Int (variable)", reserve(("SKU-1", 10**20, "WH-1")), 400, "BAD_USER_INPUT", postgres=True),
    Http("more than in stock", reserve(("SKU-1", 11, "WH-1")), 200, "INSUFFICIENT_STOCK", postgres=True),
    Http("more units than a reservation may hold", reserve(("SKU-1", 1001, None)), 200, "INVALID_QUANTITY"),
    Http("no lines", reserve(), 200, "INVALID_INPUT"),
    Http("unknown SKU", reserve(("NO-SUCH-SKU", 1, None)), 200, "UNKNOWN_SKU", postgres=True),
    Http("unknown location", reserve(("SKU-1", 1, "NO-SUCH-WH")), 200, "UNKNOWN_LOCATION", postgres=True),
    Http("unknown channel", reserve(("SKU-1", 1, None), channelCode="NO-SUCH-CHANNEL"), 200, "UNKNOWN_CHANNEL"),
    Http("duplicate lines", reserve(("SKU-1", 1, "WH-1"), ("SKU-1", 2, "WH-1")), 200, "DUPLICATE_LINE", postgres=True),
    Http("ttl zero", reserve(("SKU-1", 1, "WH-1"), ttlSeconds=0), 200, "INVALID_TTL"),
    Http("ttl beyond the maximum", reserve(("SKU-1", 1, "WH-1"), ttlSeconds=86_400), 200, "INVALID_TTL"),
    Http("empty idempotency key", reserve(("SKU-1", 1, "WH-1"), key=" "), 200, "INVALID_INPUT"),
    Http(
        "idempotency key reused with other lines",
        reserve(("SKU-2", 1, "WH-1"), key="seed-committed"),
        200,
        "IDEMPOTENCY_CONFLICT",
        postgres=True,
    ),
    # reservations in the wrong state
    Http(
        "commit an expired reservation",
        gql(COMMIT, id="{expired}", orderRef="o"),
        200,
        "RESERVATION_EXPIRED",
        postgres=True,
    ),
    Http("extend an expired reservation", gql(EXTEND, id="{expired}", ttl=60), 200, "RESERVATION_EXPIRED"),
    Http(
        "commit a released reservation",
        gql(COMMIT, id="{released}", orderRef="o"),
        200,
        "RESERVATION_NOT_ACTIVE",
        postgres=True,
    ),
    Http("extend a released reservation", gql(EXTEND, id="{released}", ttl=60), 200, "RESERVATION_NOT_ACTIVE"),
    Http(
        "release a committed reservation", gql(RELEASE, id="{committed}"), 200, "RESERVATION_NOT_ACTIVE", postgres=True
    ),
    Http("extend a committed reservation", gql(EXTEND, id="{committed}", ttl=60), 200, "RESERVATION_NOT_ACTIVE"),
    Http("extend with ttl zero", gql(EXTEND, id="{active}", ttl=0), 200, "INVALID_TTL"),
    Http(
        "release an unknown reservation",
        gql(RELEASE, id="00000000-0000-0000-0000-000000000000"),
        200,
        "RESERVATION_NOT_FOUND",
    ),
    Http(
        "commit a reservation id that is not an id",
        gql(COMMIT, id="'; DROP TABLE skus; --", orderRef="o"),
        200,
        "RESERVATION_NOT_FOUND",
        postgres=True,
    ),
    # events
    Http("negative RECEIVED", gql(RECORD, input=[event(quantity=-5)]), 200, "INVALID_QUANTITY", postgres=True),
    Http("event for an unknown SKU", gql(RECORD, input=[event(skuCode="NOPE")]), 200, "UNKNOWN_SKU"),
    Http(
        "event reusing an id with other content",
        gql(RECORD, input=[event(externalId="seed-SKU-1-WH-1")]),
        200,
        "EVENT_CONFLICT",
        postgres=True,
    ),
    Http(
        "event batch over the limit",
        gql(RECORD, input=[event(externalId=f"b{i}") for i in range(MAX_BATCH + 1)]),
        200,
        "BATCH_TOO_LARGE",
    ),
    # keys and scopes
    Http("no key", gql(AVAILABILITY_Q), 401, "UNAUTHENTICATED", role=None, postgres=True),
    Http(
        "unknown key",
        gql(AVAILABILITY_Q),
        401,
        "UNAUTHENTICATED",
        headers={"Authorization": "Bearer sw_0123456789ab_" + "A" * 43},
        role=None,
        postgres=True,
    ),
    Http("revoked key", reserve(("SKU-1", 1, "WH-1")), 401, "UNAUTHENTICATED", role="revoked", postgres=True),
    Http(
        "not a bearer token",
        gql(AVAILABILITY_Q),
        401,
        "UNAUTHENTICATED",
        headers={"Authorization": "Basic YTpi"},
        role=None,
    ),
    Http("storefront key reserving", reserve(("SKU-1", 1, "WH-1")), 200, "FORBIDDEN", role="storefront", postgres=True),
    Http("checkout key recording events", gql(RECORD, input=[event()]), 200, "FORBIDDEN", role="checkout"),
    Http("admin key holding stock", reserve(("SKU-1", 1, "WH-1")), 200, "FORBIDDEN", role="admin"),
    Http(
        "storefront key creating a key",
        gql('mutation { createApiKey(input: {name: "x", scopes: [ADMIN]}) { secret userErrors { code } } }'),
        200,
        "FORBIDDEN",
        role="storefront",
        postgres=True,
    ),
    # query shape
    Http("fields nested through introspection", gql(TYPE_BOMB), 400, "QUERY_TOO_DEEP"),
    Http("introspection too deep", gql(INTROSPECTION_BOMB), 400, "QUERY_TOO_DEEP"),
    Http("alias bomb", gql(ALIAS_BOMB), 400, "TOO_MANY_ALIASES", postgres=True),
    Http("token bomb", gql(TOKEN_BOMB), 400, "QUERY_TOO_LARGE"),
    Http(
        "40,000 SKU codes in a variable",
        gql("query($s: [String!]) { stockLevels(skuCodes: $s) { skuCode } }", s=WIDE_LIST),
        200,
        "INPUT_TOO_LARGE",
        postgres=True,
    ),
    Http(
        "40,000 location codes",
        gql("query($s: [String!]) { locations(codes: $s) { code } }", s=WIDE_LIST),
        400,
        "QUERY_TOO_COSTLY",  # 40,000 rows to read: refused before the arguments are looked at
        postgres=True,
    ),
    Http(
        "unterminated string",
        gql('query { availability(skuCodes: ["SKU-1) { available } }'),
        400,
        "GRAPHQL_PARSE_FAILED",
    ),
    Http("unknown field", gql("query { everything }"), 400, "GRAPHQL_VALIDATION_FAILED"),
    Http(
        "variable of the wrong type",
        gql(RESERVE, input={"lines": "all of them", "idempotencyKey": 5}),
        400,
        "BAD_USER_INPUT",
    ),
    Http(
        "mutation over GET",
        {"query": 'mutation { releaseReservation(id: "x") { userErrors { code } } }'},
        405,
        "METHOD_NOT_ALLOWED",
        method="GET",
    ),
    Http("subscription over HTTP", gql(AVAILABILITY_SUB, s=["SKU-1"]), 400, "BAD_REQUEST"),
    # bodies
    Http("10 MB body", TEN_MB, 413, "PAYLOAD_TOO_LARGE", postgres=True),
    Http("invalid JSON", b'{"query": "query { __typename }"', 400, "BAD_REQUEST", postgres=True),
    Http("JSON nested 100,000 deep", NESTED_JSON, 400, "BAD_REQUEST"),
    Http(
        "not UTF-8",
        b'{"query": "query { availability(skuCodes: [\\"\xff\xfe\\"]) { available } }"}',
        400,
        "BAD_REQUEST",
        postgres=True,
    ),
    Http("NUL in a string", gql(RESERVE, input={"lines": [], "idempotencyKey": "a\x00b"}), 400, "BAD_USER_INPUT"),
    Http("a JSON array (batch)", [gql(AVAILABILITY_Q), gql(AVAILABILITY_Q)], 400, "BAD_REQUEST"),
    Http("query not a string", {"query": 42}, 400, "BAD_REQUEST"),
    Http(
        "an operationName the document lacks", {"query": AVAILABILITY_Q, "operationName": "Other"}, 400, "BAD_REQUEST"
    ),
    Http("no query", {"variables": {}}, 400, "BAD_REQUEST"),
    Http(
        "text/plain body",
        b"query { __typename }",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        headers={"Content-Type": "text/plain"},
        postgres=True,
    ),
    Http(
        "application/graphql body",
        b"query { __typename }",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        headers={"Content-Type": "application/graphql"},
    ),
    Http(
        "latin-1 charset",
        b'{"query": "query { __typename }"}',
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        headers={"Content-Type": "application/json; charset=iso-8859-1"},
    ),
    Http(
        "form body",
        b"query=query+%7B+__typename+%7D",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Http("nothing acceptable", gql(AVAILABILITY_Q), 406, "NOT_ACCEPTABLE", headers={"Accept": "text/html"}),
]


# -- issue 12 (hostile input, round 2): each case answered INTERNAL_SERVER_ERROR, ran something it
# should not have, or answered megabytes before its fix

LOCATION_FIELDS = (
    "skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version"
)
COSTLY = (
    "query($c: [String!]!) { "
    + " ".join(
        f"a{i}: availability(skuCodes: $c) {{ skuCode available oversold version locations {{ {LOCATION_FIELDS} }} }}"
        for i in range(20)
    )
    + " }"
)
EXTERNAL_HOLDS = """mutation($input: [ExternalHoldInput!]!) { recordExternalHolds(input: $input) {
  results { index status } userErrors { code message field } } }"""
IMPORT_SNAPSHOT = """mutation($takenAt: DateTime!) { importSnapshot(source: "erp", takenAt: $takenAt,
  input: [{skuCode: "SKU-1", locationCode: "WH-1", onHand: 3}], apply: true) { rows userErrors { code field } } }"""
LEDGER_AFTER = "query($a: String) { inventoryEvents(after: $a) { nodes { id } } }"
LEVELS_AFTER = "query($a: String) { stockLevels(after: $a) { skuCode } }"
YEAR_1 = "0001-01-01T00:30:00+01:00"  # year 0 in UTC: out of Python's range
YEAR_9999 = "9999-12-31T23:30:00-01:00"  # year 10000 in UTC


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def hold(**overrides: Any) -> dict[str, Any]:
    h = {"source": "market", "externalId": "h-1", "action": "PLACE", "skuCode": "SKU-1", "locationCode": "WH-1"}
    return {**h, "quantity": 1, **overrides}


ISSUE_12_HTTP_CASES = [
    # 1: one request's cost as a whole (aliases x codes x locations), refused before anything runs
    Http(
        "20 aliases x 1,000 copies of a code, with locations (storefront key)",
        gql(COSTLY, c=["SKU-1"] * 1000),
        400,
        "QUERY_TOO_COSTLY",
        role="storefront",
        postgres=True,
    ),
    Http(
        "an answer over max_response_bytes",
        gql("{ __schema { types { name description fields { name description } } } }"),
        200,
        "RESPONSE_TOO_LARGE",
    ),
    # 5: JSON bodies that are not objects
    Http("a JSON string body", b'"x"', 400, "BAD_REQUEST", postgres=True),
    Http("a JSON null body", b"null", 400, "BAD_REQUEST"),
    Http("a JSON number body", b"42", 400, "BAD_REQUEST"),
    Http("a JSON boolean body", b"true", 400, "BAD_REQUEST"),
    # 6: NUL, whichever way it comes, and lone surrogates
    Http(
        "NUL in a GET query string",
        {"query": 'query { availability(skuCodes: ["SKU\x00"]) { available } }'},
        200,
        "BAD_USER_INPUT",
        method="GET",
        postgres=True,
    ),
    Http(
        "NUL as a \\u{0} escape in the document",
        gql('query { availability(skuCodes: ["SKU\\u{0}"]) { available } }'),
        200,
        "BAD_USER_INPUT",
        postgres=True,
    ),
    Http(
        "NUL as a \\u0000 escape in a mutation's document",
        gql('mutation { upsertSkus(input: [{code: "A\\u0000", name: "a"}]) { userErrors { code } } }'),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "a cursor that decodes to NUL",
        gql(LEVELS_AFTER, a=cursor("SKU\x00\x1fWH")),
        200,
        "INVALID_CURSOR",
        postgres=True,
    ),
    Http(
        "a lone surrogate in a variable",
        b'{"query": "query($s: [String!]!) { availability(skuCodes: $s) { available } }", '
        b'"variables": {"s": ["\\ud800"]}}',
        400,
        "BAD_USER_INPUT",
        postgres=True,
    ),
    Http(
        "a lone surrogate in the document",
        gql('query { availability(skuCodes: ["\\ud800"]) { available } }'),
        400,
        "GRAPHQL_PARSE_FAILED",
        postgres=True,
    ),
    # 7: lengths the database alone checked (varchar(100), varchar(200))
    Http(
        "channelCode of 101 characters",
        reserve(("SKU-1", 1, None), channelCode="c" * 101),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "external hold channelCode of 101 characters",
        gql(EXTERNAL_HOLDS, input=[hold(channelCode="c" * 101)]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "external hold id of 201 characters",
        gql(EXTERNAL_HOLDS, input=[hold(externalId="h" * 201)]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "event source of 101 characters",
        gql(RECORD, input=[event(source="s" * 101)]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "idempotency key of 201 characters",
        reserve(("SKU-1", 1, "WH-1"), key="k" * 201),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    # 8: times out of range, or without a time zone
    Http(
        "occurredAt in year 1 (+01:00)",
        gql(RECORD, input=[event(occurredAt=YEAR_1)]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "occurredAt in year 1 (Z), applied as -infinity before",
        gql(RECORD, input=[event(occurredAt="0001-01-01T00:00:00Z")]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "expectedAt in year 9999 (-01:00)",
        gql(RECORD, input=[event(type="INCOMING", expectedAt=YEAR_9999)]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http("importSnapshot takenAt in year 1", gql(IMPORT_SNAPSHOT, takenAt=YEAR_1), 200, "INVALID_INPUT", postgres=True),
    Http("importSnapshot takenAt in year 9999", gql(IMPORT_SNAPSHOT, takenAt=YEAR_9999), 200, "INVALID_INPUT"),
    Http(
        "external hold expiresAt in year 1",
        gql(EXTERNAL_HOLDS, input=[hold(expiresAt=YEAR_1)]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    Http(
        "external hold expiresAt in year 9999",
        gql(EXTERNAL_HOLDS, input=[hold(expiresAt=YEAR_9999)]),
        200,
        "INVALID_INPUT",
    ),
    Http(
        "external hold expiresAt without a time zone",
        gql(EXTERNAL_HOLDS, input=[hold(expiresAt="2026-06-01T09:00:00")]),
        200,
        "INVALID_INPUT",
        postgres=True,
    ),
    # 9: numbers past what dates and BIGINT hold
    Http(
        "orphanedHolds a million days back",
        gql("{ orphanedHolds(committedOlderThanDays: 1000000) { id } }"),
        200,
        "BAD_USER_INPUT",
        postgres=True,
    ),
    Http("a ledger cursor past 64 bits", gql(LEDGER_AFTER, a=cursor(str(2**70))), 200, "INVALID_CURSOR", postgres=True),
    Http(
        "a ledger cursor of a superscript two", gql(LEDGER_AFTER, a=cursor("²")), 200, "INVALID_CURSOR", postgres=True
    ),
    # 11: the GraphQL-over-HTTP answer, not the first operation run
    Http(
        "several operations and no operationName",
        gql('query A { __typename } mutation B { releaseReservation(id: "x") { userErrors { code } } }'),
        400,
        "BAD_REQUEST",
        postgres=True,
    ),
]
HTTP_CASES += ISSUE_12_HTTP_CASES


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        for state, rid in ids.items():
            value = value.replace("{" + state + "}", rid)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


async def _send(world: World, case: Http) -> httpx.Response:
    headers = {**world.headers(case.role), **case.headers}
    async with httpx.AsyncClient(base_url=world.server.url, timeout=60) as client:
        if case.method == "GET":
            params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in case.body.items()}
            return await client.get("/graphql", params=params, headers=headers)
        if isinstance(case.body, bytes):
            return await client.post("/graphql", content=case.body, headers=headers)
        return await client.post("/graphql", content=json.dumps(_fill(case.body, world.ids)), headers=headers)


def _codes(body: dict[str, Any]) -> list[str]:
    """The userError codes of the (only) root field, or the GraphQL errors' codes."""
    if body.get("errors"):
        return [e.get("extensions", {}).get("code") for e in body["errors"]]
    (payload,) = body["data"].values()
    return [e["code"] for e in payload["userErrors"]]


async def _check_http(world: World, case: Http) -> None:
    before = await snapshot(world.url)
    logged = world.log_size()
    response = await _send(world, case)
    after = await snapshot(world.url)
    log = world.log_since(logged)
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    assert response.status_code < 500, response.text
    assert response.status_code == case.status, response.text[:500]
    body = response.json()  # every answer is a GraphQL response, errors included
    assert case.code in _codes(body), body if len(response.content) < 2000 else response.text[:2000]
    assert "INTERNAL_SERVER_ERROR" not in response.text
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE if case.code != "NOT_ACCEPTABLE" else "")
    if case.status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if case.status == 405:
        assert response.headers["allow"] == "POST"
    assert after == before, f"{case.name} changed the database"


def test_the_table_is_big_enough() -> None:
    assert len(HTTP_CASES) + len(WS_CASES) >= 40
    assert len({c.name for c in HTTP_CASES} | {c.name for c in WS_CASES}) == len(HTTP_CASES) + len(WS_CASES)


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.name)
async def test_http(world: World, case: Http) -> None:
    await _check_http(world, case)


# -- the websocket cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ws:
    """A websocket exchange. `run` drives the socket and returns what came back: a close code
    (int), a handshake status ("http 403"), or the error codes/messages of an operation (list)."""

    name: str
    run: Callable[[World], Any]
    expect: Any


async def _open(world: World, protocol: str = TRANSPORT_WS, init: Any = None, **kw: Any) -> ClientConnection:
    ws = await connect(world.server.ws_url, subprotocols=[protocol], open_timeout=TIMEOUT, **kw)  # type: ignore[list-item]
    if init is not None:
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
    return ws


def _auth(world: World, role: str = "all") -> dict[str, str]:
    return {"authorization": f"Bearer {world.keys[role]}"}


async def _close_code(ws: ClientConnection) -> int | str:
    """Reads until the server closes; the close code (or the first non-keepalive message)."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = json.loads(await ws.recv())
                if message.get("type") not in ("ping", "ka", "connection_ack"):
                    return f"message {message}"
    except ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code


async def _acked(world: World, protocol: str = TRANSPORT_WS, role: str = "all") -> ClientConnection:
    ws = await _open(world, protocol, _auth(world, role))
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "connection_ack":
                return ws


async def _operation_errors(ws: ClientConnection, op_id: str) -> list[str]:
    """The error codes (else messages) the server sends for operation `op_id`, or the payload's
    userError codes for a mutation answered normally."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") != op_id:
                continue
            payload = message.get("payload")
            if message["type"] == "error":
                errors = payload if isinstance(payload, list) else [payload]
                return [(e.get("extensions") or {}).get("code") or e.get("message") for e in errors]
            if message["type"] in ("next", "data"):
                if payload.get("errors"):
                    return [(e.get("extensions") or {}).get("code") or e["message"] for e in payload["errors"]]
                (root,) = payload["data"].values()
                return [e["code"] for e in root.get("userErrors", [])]
            if message["type"] == "complete":
                return []


async def _subscribe(
    world: World, query: str, variables: dict[str, Any], role: str = "all", protocol: str = TRANSPORT_WS
) -> list[str]:
    ws = await _acked(world, protocol, role)
    try:
        kind = "subscribe" if protocol == TRANSPORT_WS else "start"
        await ws.send(json.dumps({"type": kind, "id": "1", "payload": {"query": query, "variables": variables}}))
        return await _operation_errors(ws, "1")
    finally:
        await ws.close()


async def _init_and_close(world: World, init: Any, protocol: str = TRANSPORT_WS) -> int | str:
    ws = await _open(world, protocol, init)
    try:
        if protocol == LEGACY_WS:
            message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            return f"{message['type']} {message.get('payload', {}).get('code')}"
        return await _close_code(ws)
    finally:
        await ws.close()


async def _raw_then_close(world: World, *frames: str | bytes, init: bool = True) -> int | str:
    ws = await (_acked(world) if init else _open(world))
    try:
        for frame in frames:
            await ws.send(frame)
        return await _close_code(ws)
    finally:
        await ws.close()


async def _handshake(world: World, origin: str) -> str:
    try:
        ws = await _open(world, origin=origin)  # type: ignore[arg-type]
    except InvalidStatus as refused:
        return f"http {refused.response.status_code}"
    try:
        await ws.send(json.dumps({"type": "connection_init", "payload": _auth(world)}))
        return "accepted" if json.loads(await ws.recv())["type"] == "connection_ack" else "refused"
    finally:
        await ws.close()


async def _too_many_subscriptions(world: World) -> list[str]:
    ws = await _acked(world)
    try:
        for i in range(MAX_SUBSCRIPTIONS + 1):
            payload = {"query": AVAILABILITY_SUB, "variables": {"s": ["SKU-1"]}}
            await ws.send(json.dumps({"type": "subscribe", "id": str(i), "payload": payload}))
        return await _operation_errors(ws, str(MAX_SUBSCRIPTIONS))
    finally:
        await ws.close()


WS_CASES = [
    Ws("ws: connection_init without a key", lambda w: _init_and_close(w, {}), 4403),
    Ws(
        "ws: connection_init with no payload",
        lambda w: _raw_then_close(w, json.dumps({"type": "connection_init"}), init=False),
        4403,
    ),
    Ws("ws: unknown key", lambda w: _init_and_close(w, {"authorization": "Bearer sw_0123456789ab_" + "B" * 43}), 4403),
    Ws("ws: revoked key", lambda w: _init_and_close(w, _auth(w, "revoked")), 4403),
    Ws("ws: not a bearer token", lambda w: _init_and_close(w, {"authorization": w.keys["all"]}), 4403),
    Ws("ws: authorization not a string", lambda w: _init_and_close(w, {"authorization": ["Bearer", 1]}), 4403),
    Ws("ws (graphql-ws): no key", lambda w: _init_and_close(w, {}, LEGACY_WS), "connection_error UNAUTHENTICATED"),
    Ws(
        "ws: subscribe before connection_init",
        lambda w: _raw_then_close(
            w, json.dumps({"type": "subscribe", "id": "1", "payload": {"query": AVAILABILITY_Q}}), init=False
        ),
        4401,
    ),
    Ws(
        "ws: NUL in a variable",
        lambda w: _raw_then_close(
            w,
            json.dumps(
                {"type": "subscribe", "id": "1", "payload": {"query": AVAILABILITY_SUB, "variables": {"s": ["a\x00"]}}}
            ),
        ),
        4400,
    ),
    Ws("ws: invalid JSON", lambda w: _raw_then_close(w, '{"type": "subscribe", '), 4400),
    Ws("ws: non-UTF-8 frame", lambda w: _raw_then_close(w, b'{"type": "\xff\xfe"}'), 4400),
    Ws("ws: unknown message type", lambda w: _raw_then_close(w, json.dumps({"type": "take-everything"})), 4400),
    Ws(
        "ws: duplicate operation id",
        lambda w: _raw_then_close(
            w,
            *[
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "same",
                        "payload": {"query": AVAILABILITY_SUB, "variables": {"s": ["SKU-1"]}},
                    }
                )
            ]
            * 2,
        ),
        4409,
    ),
    Ws(
        "ws: storefront subscription with a checkout key",
        lambda w: _subscribe(w, AVAILABILITY_SUB, {"s": ["SKU-1"]}, role="checkout"),
        ["FORBIDDEN"],
    ),
    Ws(
        "ws: reserve with a storefront key",
        lambda w: _subscribe(
            w,
            RESERVE,
            {"input": {"lines": [{"skuCode": "SKU-1", "quantity": 1}], "idempotencyKey": "ws"}},
            role="storefront",
        ),
        ["FORBIDDEN"],
    ),
    Ws(
        "ws: negative quantity over a websocket",
        lambda w: _subscribe(
            w, RESERVE, {"input": {"lines": [{"skuCode": "SKU-1", "quantity": -3}], "idempotencyKey": "ws"}}
        ),
        ["INVALID_QUANTITY"],
    ),
    Ws(
        "ws: unknown SKU over a websocket",
        lambda w: _subscribe(
            w, RESERVE, {"input": {"lines": [{"skuCode": "NOPE", "quantity": 1}], "idempotencyKey": "ws"}}
        ),
        ["UNKNOWN_SKU"],
    ),
    Ws("ws: fields nested through introspection", lambda w: _subscribe(w, TYPE_BOMB, {}), ["QUERY_TOO_DEEP"]),
    Ws("ws: alias bomb", lambda w: _subscribe(w, ALIAS_BOMB, {}), ["TOO_MANY_ALIASES"]),
    Ws(
        "ws: unterminated string",
        lambda w: _subscribe(w, 'subscription { availabilityChanged(skuCodes: ["A) { x } }', {}),
        ["GRAPHQL_PARSE_FAILED"],
    ),
    Ws("ws: too many SKU codes", lambda w: _subscribe(w, AVAILABILITY_SUB, {"s": WIDE_LIST}), ["INPUT_TOO_LARGE"]),
    Ws(
        "ws: subscriptions beyond the per-connection limit",
        _too_many_subscriptions,
        ["TOO_MANY_SUBSCRIPTIONS"],
    ),
    Ws("ws: page on an origin not allowed", lambda w: _handshake(w, "https://evil.example.net"), "http 403"),
    Ws("ws: page on an allowed origin", lambda w: _handshake(w, "https://shop.example.com"), "accepted"),
]


@pytest.mark.parametrize("case", WS_CASES, ids=lambda c: c.name)
async def test_websocket(world: World, case: Ws) -> None:
    before = await snapshot(world.url)
    got = await case.run(world)
    after = await snapshot(world.url)
    assert (sorted(set(got)) if isinstance(got, list) else got) == case.expect  # some rules report twice
    assert after == before, f"{case.name} changed the database"


async def test_codes_asked_twice_are_read_once_and_a_big_honest_request_passes(world: World) -> None:
    """Item 1's other halves: duplicates are dropped before reading, and the cost limit leaves room for
    a storefront's real request (1,000 distinct codes with their locations costs 21,000)."""
    # what a storefront key may read per location (README, Security)
    query = "query($c: [String!]!) { availability(skuCodes: $c) { skuCode locations { locationCode available } } }"
    async with httpx.AsyncClient(base_url=world.server.url, timeout=TIMEOUT) as client:
        twice = await client.post(
            "/graphql", json=gql(query, c=["SKU-1", "SKU-2", "SKU-1"]), headers=world.headers("storefront")
        )
        assert [a["skuCode"] for a in twice.json()["data"]["availability"]] == ["SKU-1", "SKU-2"]
        wide = await client.post(
            "/graphql",
            json=gql(query, c=["SKU-1", *(f"NO-{i}" for i in range(999))]),
            headers=world.headers("storefront"),
        )
        assert wide.status_code == 200, wide.text[:500]
        assert [a["skuCode"] for a in wide.json()["data"]["availability"]] == ["SKU-1"]
