"""Isolation between keys: reservations, carts and routing decisions belong to the key that made them
(an admin key sees and acts on all; to any other key they do not exist), and the ledger and the key
audit record which key did what."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from app.domain.reservations import RequestedLine
from app.security import keys
from app.security.scopes import Scope
from app.services import reservations
from app.services.context import Actor, acting_on_ledger
from tests.conftest import Api
from tests.helpers import COMMIT, EXTEND, RELEASE, RESERVATION_FIELDS, catalogue, event, level, receive, record, reserve
from tests.test_routing_api import DECISIONS, ROUTE_AND_RESERVE

BY_CART = f"query($cart: String!) {{ reservations(cartRef: $cart) {{ {RESERVATION_FIELDS} }} }}"
BY_ID = f"query($id: ID!) {{ reservation(id: $id) {{ {RESERVATION_FIELDS} }} }}"
LEDGER = """query($sku: String) { inventoryEvents(skuCode: $sku) { nodes {
  type reservationId actorKeyId actor { keyId name prefix } } } }"""
ONE = [{"skuCode": "SKU-1", "quantity": 2, "locationCode": "WH-1"}]


async def _key(api: Api, *scopes: Scope, name: str) -> tuple[Api, str]:
    """A client with a new key of these scopes, and the key's id."""
    secret = await api.new_key(*scopes, name=name)
    found = await keys.find_key(api.ctx.db, secret)
    assert found is not None
    return api.as_key(secret), found.id


async def _held(api: Api, client: Api, cart: str = "cart-1") -> str:
    made = await reserve(client, ONE, cartRef=cart)
    assert made["userErrors"] == [], made
    rid: str = made["reservation"]["id"]
    return rid


def _codes(payload: dict[str, Any]) -> list[str]:
    return [e["code"] for e in payload["userErrors"]]


async def test_another_checkout_key_cannot_see_list_extend_commit_or_release_a_reservation(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    first, _ = await _key(api, Scope.CHECKOUT, name="first checkout")
    second, _ = await _key(api, Scope.CHECKOUT, name="second checkout")
    rid = await _held(api, first)

    assert (await second.ok(BY_CART, cart="cart-1"))["reservations"] == []
    assert (await second.ok(BY_ID, id=rid))["reservation"] is None
    # the refusal is the one an id that never existed gets: ids cannot be probed
    for query, variables in ((EXTEND, {"ttl": 600}), (COMMIT, {"orderRef": "ORD-1"}), (RELEASE, {})):
        for target in (rid, "00000000-0000-0000-0000-000000000000"):
            answer = next(iter((await second.ok(query, id=target, **variables)).values()))
            assert answer["reservation"] is None
            assert _codes(answer) == ["RESERVATION_NOT_FOUND"]
            assert answer["userErrors"][0]["message"] == f"no reservation {target!r}"

    # nothing changed: the first key's hold is as it was, and still its own to act on
    rows = await api.sql("SELECT status, expires_at, order_ref FROM reservations WHERE id = :id", id=rid)
    assert [(r[0], r[2]) for r in rows] == [("ACTIVE", None)]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 2
    assert [r["id"] for r in (await first.ok(BY_CART, cart="cart-1"))["reservations"]] == [rid]
    assert (await first.ok(BY_ID, id=rid))["reservation"]["status"] == "ACTIVE"
    extended = (await first.ok(EXTEND, id=rid, ttl=600))["extendReservation"]
    assert extended["userErrors"] == []
    committed = (await first.ok(COMMIT, id=rid, orderRef="ORD-1"))["commitReservation"]
    assert committed["reservation"]["status"] == "COMMITTED"
    assert (await level(api, "SKU-1", "WH-1"))["committed"] == 2


async def test_an_admin_key_sees_and_acts_on_every_keys_reservations(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    checkout, _ = await _key(api, Scope.CHECKOUT, name="checkout")
    operator, _ = await _key(api, Scope.ADMIN, Scope.CHECKOUT, name="operator")
    rid = await _held(api, checkout)
    assert [r["id"] for r in (await operator.ok(BY_CART, cart="cart-1"))["reservations"]] == [rid]
    assert (await operator.ok(BY_ID, id=rid))["reservation"]["id"] == rid
    released = (await operator.ok(RELEASE, id=rid))["releaseReservation"]
    assert released["userErrors"] == [] and released["reservation"]["status"] == "RELEASED"
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 0


async def test_route_and_reserve_with_another_keys_cart_leaves_its_hold_alone(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    checkout, _ = await _key(api, Scope.CHECKOUT, name="checkout")
    router, _ = await _key(api, Scope.ROUTER, name="router")
    rid = await _held(api, checkout, cart="cart-7")
    order = {"orderRef": "ORD-7", "cartRef": "cart-7", "lines": [{"skuCode": "SKU-1", "quantity": 2}]}

    # the router names the checkout's cart (and its idempotency key): the cart's 2 units are not its
    # to give back, so only 1 is free and the order is refused
    refused = (await router.ok(ROUTE_AND_RESERVE, input={**order, "idempotencyKey": "k-taken"}))["routeAndReserve"]
    assert _codes(refused) == ["INSUFFICIENT_STOCK"] and refused["reservation"] is None
    assert await api.sql("SELECT status FROM reservations WHERE id = :id", id=rid) == [("ACTIVE",)]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 2

    # the checkout's own routeAndReserve of the same cart converts its hold, as before
    done = (await checkout.ok(ROUTE_AND_RESERVE, input=order))["routeAndReserve"]
    assert done["userErrors"] == [] and done["reservation"]["cartRef"] == "cart-7"
    assert await api.sql("SELECT status FROM reservations WHERE id = :id", id=rid) == [("RELEASED",)]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 2


async def test_routing_decisions_are_their_keys_own(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    router, router_id = await _key(api, Scope.ROUTER, name="router")
    other, _ = await _key(api, Scope.ROUTER, name="other router")
    lines = [{"skuCode": "SKU-1", "quantity": 1}]
    assert (await router.ok(ROUTE_AND_RESERVE, input={"orderRef": "ORD-9", "lines": lines}))["routeAndReserve"][
        "userErrors"
    ] == []
    refused = {"orderRef": "ORD-9", "idempotencyKey": "again", "lines": [{"skuCode": "SKU-1", "quantity": 50}]}
    assert _codes((await router.ok(ROUTE_AND_RESERVE, input=refused))["routeAndReserve"]) == ["INSUFFICIENT_STOCK"]

    assert len((await router.ok(DECISIONS, ref="ORD-9"))["routingDecisions"]) == 2  # made and refused
    assert (await other.ok(DECISIONS, ref="ORD-9"))["routingDecisions"] == []
    assert len((await api.ok(DECISIONS, ref="ORD-9"))["routingDecisions"]) == 2  # the fixture's key is admin
    owners = await api.sql("SELECT owner_key_id FROM routing_decisions")
    assert owners == [(router_id,), (router_id,)]
    assert await api.sql("SELECT owner_key_id FROM reservations") == [(router_id,)]


async def test_the_ledger_names_the_key_behind_every_row(api: Api) -> None:
    await catalogue(api)
    erp, erp_id = await _key(api, Scope.INTEGRATION, name="erp")
    checkout, checkout_id = await _key(api, Scope.CHECKOUT, name="checkout")
    operator, operator_id = await _key(api, Scope.ADMIN, Scope.CHECKOUT, name="operator")
    assert (await record(erp, event("RECEIVED", "SKU-1", "WH-1", 10)))["userErrors"] == []
    committed = await _held(api, checkout, cart="a")
    assert (await checkout.ok(COMMIT, id=committed, orderRef="ORD-1"))["commitReservation"]["userErrors"] == []
    released = await _held(api, checkout, cart="b")
    assert (await operator.ok(RELEASE, id=released))["releaseReservation"]["userErrors"] == []
    expired = await _held(api, checkout, cart="c")
    later = replace(api.ctx, clock=lambda: api.ctx.clock() + timedelta(hours=1))
    assert await reservations.sweep_expired(later) == 1  # the sweeper: no key

    nodes = (await api.ok(LEDGER, sku="SKU-1"))["inventoryEvents"]["nodes"]
    seen = [(n["type"], n["reservationId"], n["actorKeyId"]) for n in reversed(nodes)]
    assert seen == [
        ("RECEIVED", None, erp_id),
        ("RESERVED", committed, checkout_id),
        ("RESERVATION_COMMITTED", committed, checkout_id),
        ("RESERVED", released, checkout_id),
        ("RESERVATION_RELEASED", released, operator_id),
        ("RESERVED", expired, checkout_id),
        ("RESERVATION_EXPIRED", expired, None),
    ]
    actors = {n["actorKeyId"]: n["actor"] for n in nodes}
    assert actors[erp_id]["name"] == "erp" and actors[erp_id]["keyId"] == erp_id
    assert actors[None] == {"keyId": None, "name": "system", "prefix": None}
    # the key's id and public prefix, never its secret
    assert all(n["actor"]["prefix"] is None or len(n["actor"]["prefix"]) == 12 for n in nodes)
    stored = await api.sql("SELECT DISTINCT actor_key_id FROM inventory_events")
    assert {r[0] for r in stored} == {erp_id, checkout_id, operator_id, None}
    owners = {r[0] for r in await api.sql("SELECT owner_key_id FROM reservations")}
    assert owners == {checkout_id}


async def test_a_hold_expired_inside_another_keys_reserve_is_recorded_as_expired_by_nobody(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 2)
    first, _ = await _key(api, Scope.CHECKOUT, name="first")
    _, second_id = await _key(api, Scope.CHECKOUT, name="second")
    gone = await _held(api, first)
    # the second key's reserve an hour later, as the scope check runs it (not through HTTP, so that the
    # background sweeper, on the real clock, cannot expire the hold first): it finds the hold due and
    # expires it on its way
    second = Actor(key_id=second_id, sees_all=False)
    later = replace(api.ctx, clock=lambda: api.ctx.clock() + timedelta(hours=1), actor=second)
    request = reservations.ReserveRequest([RequestedLine("SKU-1", 2, "WH-1")], "k", idempotency_scope=second_id)
    with acting_on_ledger(second):
        taken = await reservations.reserve(later, request)
    rows = await api.sql(
        "SELECT kind, actor_key_id FROM inventory_events WHERE reservation_id IN (:a, :b) ORDER BY id",
        a=gone,
        b=taken.id,
    )
    assert [tuple(r) for r in rows][1:] == [("RESERVATION_EXPIRED", None), ("RESERVED", second_id)]


KEY_EVENTS = """query($key: ID) { apiKeyEvents(keyId: $key) { keyId keyPrefix action actorKeyId actorPrefix at } }"""
CREATE = """mutation($name: String!) { createApiKey(input: {name: $name, scopes: [CHECKOUT]}) {
  apiKey { id prefix } userErrors { code } } }"""
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { revokedAt } userErrors { code } } }"


async def test_creating_and_revoking_keys_is_audited_with_who_did_it(api: Api) -> None:
    operator, operator_id = await _key(api, Scope.ADMIN, name="operator")
    made = (await operator.ok(CREATE, name="checkout"))["createApiKey"]["apiKey"]
    for _ in range(2):  # revoking a revoked key changes nothing, and audits nothing
        assert (await operator.ok(REVOKE, id=made["id"]))["revokeApiKey"]["userErrors"] == []
    events = (await operator.ok(KEY_EVENTS, key=made["prefix"]))["apiKeyEvents"]
    assert [(e["keyId"], e["action"], e["actorKeyId"]) for e in events] == [
        (made["id"], "CREATED", operator_id),
        (made["id"], "REVOKED", operator_id),
    ]
    assert {e["actorPrefix"] for e in events} == {str(operator.key).split("_")[1]}
    # keys made outside GraphQL (the command line, the fixture) are audited as made by no key
    everything = (await operator.ok(KEY_EVENTS))["apiKeyEvents"]
    assert [(e["action"], e["actorKeyId"]) for e in everything][:2] == [("CREATED", None), ("CREATED", None)]
    assert len(everything) == 4
    # the audit is for operators only
    checkout, _ = await _key(api, Scope.CHECKOUT, Scope.ROUTER, Scope.INTEGRATION, Scope.STOREFRONT, name="all")
    body = (await checkout.raw(KEY_EVENTS)).json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
