"""The scope every operation needs, in one table, applied to the schema when it is built.

Each root field (query, mutation, subscription) names the scopes that may call it: a key with any of
them may. A root field missing from the table is refused to everyone (fails closed), and
tests/test_security_scopes.py fails, so a new operation cannot ship without a decision.
`admin` implies no other scope (README.md, section Security, says why).

Some fields of the types an operation returns are internals a public storefront key must not read
(`FIELDS`): selecting one without its scope refuses the whole operation with FORBIDDEN, before it
runs. The same check tells the services which key acts (`acting`), for ownership and the ledger.

Mutations that hold stock are also rate-limited per key here (`HOLDS`), returning the payload with
a RATE_LIMITED userError, as the contract wants expected refusals reported.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from dataclasses import replace
from functools import cache
from typing import Any

from graphql import GraphQLError
from strawberry.extensions.field_extension import AsyncExtensionResolver, FieldExtension
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.types import Info
from strawberry.types.base import (
    StrawberryList,
    StrawberryObjectDefinition,
    StrawberryOptional,
    get_object_definition,
)
from strawberry.types.field import StrawberryField
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection
from strawberry.utils.str_converters import to_camel_case

from app.compat import refuse
from app.db import tenancy
from app.graphql.types import UserError
from app.security.scopes import Scope
from app.services.context import Actor, Ctx, acting_on_ledger

S = Scope
REQUIRED: dict[str, frozenset[Scope]] = {
    # storefront: what may be sold, live
    "Query.availability": frozenset({S.STOREFRONT}),
    "Query.unknownSkuCodes": frozenset({S.STOREFRONT}),
    "Subscription.availabilityChanged": frozenset({S.STOREFRONT}),
    # admin too: the ops console (/ops) shows and follows every position (read-only)
    "Subscription.stockLevelChanged": frozenset({S.STOREFRONT, S.ROUTER, S.ADMIN}),
    # checkout: holds and their lifecycle
    "Mutation.reserve": frozenset({S.CHECKOUT}),
    "Mutation.commitReservation": frozenset({S.CHECKOUT}),
    "Mutation.releaseReservation": frozenset({S.CHECKOUT}),
    "Mutation.extendReservation": frozenset({S.CHECKOUT}),
    "Query.reservation": frozenset({S.CHECKOUT}),
    "Query.reservations": frozenset({S.CHECKOUT}),
    # router: per-location stock and routing (routeAndReserve holds stock, so checkout may call it too)
    "Query.stockLevels": frozenset({S.ROUTER, S.ADMIN}),
    "Query.routeOrder": frozenset({S.ROUTER}),
    "Query.routingDecisions": frozenset({S.ROUTER, S.ADMIN}),
    "Query.locationRouting": frozenset({S.ROUTER, S.ADMIN}),
    "Query.locations": frozenset({S.ROUTER, S.ADMIN}),
    "Mutation.routeAndReserve": frozenset({S.ROUTER, S.CHECKOUT}),
    # integration: what source systems report
    "Mutation.recordInventoryEvents": frozenset({S.INTEGRATION}),
    "Query.inventoryEvents": frozenset({S.INTEGRATION, S.ADMIN}),
    "Mutation.importSnapshot": frozenset({S.INTEGRATION}),
    # holds taken on other platforms (marketplaces), reported by their integrations
    "Mutation.recordExternalHolds": frozenset({S.INTEGRATION}),
    "Query.orphanedHolds": frozenset({S.INTEGRATION, S.ADMIN}),
    # admin: catalogue, locations, channels, keys
    "Mutation.upsertSkus": frozenset({S.ADMIN}),
    "Mutation.upsertLocations": frozenset({S.ADMIN}),
    "Mutation.upsertChannels": frozenset({S.ADMIN}),
    "Mutation.setRingFences": frozenset({S.ADMIN}),
    "Mutation.setLocationRouting": frozenset({S.ADMIN}),
    "Query.channels": frozenset({S.ADMIN}),
    # operators (the ops console): the catalogue, what is wrong now, a SKU's holds; reads only
    "Query.skus": frozenset({S.ADMIN}),
    "Query.oversoldPositions": frozenset({S.ADMIN}),
    "Query.snapshotCorrections": frozenset({S.INTEGRATION, S.ADMIN}),
    "Query.activeHolds": frozenset({S.CHECKOUT, S.ADMIN}),
    # channels: what each endpoint was told (admin); alerts follow availability (storefront) or ops (admin)
    "Query.channelPublications": frozenset({S.ADMIN}),
    # the delivery log and replay (issue 16): operators
    "Query.channelDeliveries": frozenset({S.ADMIN}),
    "Mutation.replayChannel": frozenset({S.ADMIN}),
    "Query.channelDemand": frozenset({S.ADMIN}),
    "Mutation.setSkuLaunches": frozenset({S.ADMIN}),
    "Subscription.channelAlerts": frozenset({S.STOREFRONT, S.ADMIN}),
    "Query.apiKeys": frozenset({S.ADMIN}),
    "Query.apiKeyEvents": frozenset({S.ADMIN}),
    "Mutation.createApiKey": frozenset({S.ADMIN}),
    "Mutation.revokeApiKey": frozenset({S.ADMIN}),
    # B2B (issue 19): units and accounts are configured by operators; a key reads the accounts it serves
    "Mutation.setSellUnits": frozenset({S.ADMIN}),
    "Mutation.upsertAccounts": frozenset({S.ADMIN}),
    "Mutation.setKeyAccounts": frozenset({S.ADMIN}),
    "Query.accounts": frozenset({S.STOREFRONT, S.CHECKOUT, S.ADMIN}),
    "Query.sellUnits": frozenset({S.STOREFRONT, S.CHECKOUT, S.ADMIN}),
}

# Fields a storefront key may reach (availability, stockLevelChanged) but not read: a browser sees
# what may be sold per SKU, and per location only `available` (for pickup); the quantities behind
# them and the channel's rules are for the router or operators, as `stockLevels` is.
_INTERNALS = frozenset({S.ROUTER, S.ADMIN})
FIELDS: dict[str, frozenset[Scope]] = {
    **{
        f"StockLevel.{name}": _INTERNALS
        for name in ("onHand", "committed", "reserved", "unavailable", "safetyStock", "incoming", "oversold")
    },
    "Availability.oversold": _INTERNALS,
    "Availability.explain": _INTERNALS,
}
# What a browser (a key with only `storefront`) may read of the types its operations return; every
# other field of those types is in FIELDS. tests/test_security_scopes.py walks the schema and fails
# on a field that is in neither, so a new field on them cannot ship without a decision.
STOREFRONT_FIELDS: frozenset[str] = frozenset(
    {
        *(
            f"Availability.{n}"
            for n in ("skuCode", "channelCode", "available", "locations", "version", "accountCode", "unit")
        ),
        *(f"StockLevel.{n}" for n in ("skuCode", "locationCode", "available", "version", "updatedAt", "cursor")),
        *(f"Account.{n}" for n in ("code", "name", "channelCode", "version")),
        "SellUnit.name",
        "SellUnit.size",
        "SkuSellUnits.skuCode",
        "SkuSellUnits.units",
        *(
            f"ChannelAlert.{n}"
            for n in ("channelCode", "skuCode", "kind", "available", "previous", "lowStockThreshold", "version")
        ),
    }
)

# the mutations that hold stock: rate-limited per key (Settings.hold_rate_limit)
# (recordExternalHolds: a marketplace's holds, reported by its integration, take stock like a reserve does)
HOLDS: frozenset[str] = frozenset({"Mutation.reserve", "Mutation.routeAndReserve", "Mutation.recordExternalHolds"})

ROOT_TYPES = ("Query", "Mutation", "Subscription")


class HasScope(BasePermission):
    """Granted when the caller's key carries any of `scopes`; FORBIDDEN otherwise."""

    def __init__(self, coordinate: str, scopes: frozenset[Scope]) -> None:
        self.coordinate = coordinate
        self.scopes = scopes
        names = ", ".join(sorted(s.value for s in scopes))
        self.message = (
            f"{coordinate} needs an API key with scope {names}"
            if scopes
            else f"{coordinate} declares no scope, so nobody may call it"
        )
        self.error_extensions = {"code": "FORBIDDEN", "requiredScopes": sorted(s.value for s in scopes)}

    def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        principal = getattr(info.context, "principal", None)
        return principal is not None and principal.has_any(self.scopes)


class ScopeCheck(PermissionExtension):
    """Strawberry's PermissionExtension, with `source` and `info` positional-only: its own signature
    clashes with a field argument called `source` (inventoryEvents has one) and fails every call.

    Past the root's scope it checks the selected fields (FIELDS), then runs the resolver with the
    caller's key as the actor of every ledger row it writes."""

    def apply(self, field: StrawberryField) -> None:
        super().apply(field)
        self.root = field

    def resolve(self, next_: Any, source: Any, info: Info[Any, Any], /, **kwargs: Any) -> Any:  # type: ignore[override]
        for permission in self.permissions:
            if not permission.has_permission(source, info):
                return refuse(self, permission)
        _check_fields(self.root, info)
        _check_input_items(info, kwargs)
        tenant_id = tenant_of(info)
        with acting_on_ledger(actor_of(info)), tenancy.acting_for(tenant_id):
            result = next_(source, info, **kwargs)
            # a subscription's resolver (an async generator function) comes through here
            return _in_tenant(result, tenant_id) if inspect.isasyncgen(result) else result

    async def resolve_async(  # type: ignore[override]
        self, next_: AsyncExtensionResolver, source: Any, info: Info[Any, Any], /, **kwargs: Any
    ) -> Any:
        for permission in self.permissions:
            if not permission.has_permission(source, info):
                return refuse(self, permission)
        _check_fields(self.root, info)
        _check_input_items(info, kwargs)
        tenant_id = tenant_of(info)
        with acting_on_ledger(actor_of(info)), tenancy.acting_for(tenant_id):
            result = next_(source, info, **kwargs)
            if not inspect.isasyncgen(result):
                result = await result  # an inner extension's coroutine may hand back the stream
            return _in_tenant(result, tenant_id) if inspect.isasyncgen(result) else result


def tenant_of(info: Info[Any, Any]) -> int | None:
    """The tenant the caller acts for (None: none, so the database shows nothing)."""
    tenant_id = getattr(info.context, "tenant_id", None)
    return tenant_id if isinstance(tenant_id, int) else None


async def _in_tenant(stream: AsyncGenerator[Any, Any], tenant_id: int | None) -> AsyncGenerator[Any, None]:
    """A subscription's stream, each step run for the caller's tenant (its reads happen as it is
    iterated, long after the resolver returned)."""
    try:
        while True:
            with tenancy.acting_for(tenant_id):
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
            yield item
    finally:
        with tenancy.acting_for(tenant_id):
            await stream.aclose()


# --- field-level scopes ----------------------------------------------------------------------------


def _object_of(t: Any) -> StrawberryObjectDefinition | None:
    while isinstance(t, StrawberryOptional | StrawberryList):
        t = t.of_type
    return get_object_definition(t)


# per type name (the schema is fixed once built; definitions themselves are not hashable)
_fields: dict[str, dict[str, StrawberryField]] = {}
_reach: dict[str, bool] = {}


def _fields_of(definition: StrawberryObjectDefinition) -> dict[str, StrawberryField]:
    found = _fields.get(definition.name)
    if found is None:
        found = _fields[definition.name] = {graphql_name(f): f for f in definition.fields}
    return found


def reaches_restricted(definition: StrawberryObjectDefinition) -> bool:
    """Can a selection on this type reach a field in FIELDS? (Cached per type: the schema is fixed.)"""
    known = _reach.get(definition.name)
    if known is not None:
        return known
    _reach[definition.name] = False  # a cycle adds nothing to what the rest of the walk finds
    found = False
    for name, f in _fields_of(definition).items():
        child = _object_of(f.type)
        if f"{definition.name}.{name}" in FIELDS or (child is not None and reaches_restricted(child)):
            found = True
            break
    _reach[definition.name] = found
    return found


@cache
def _reads_everything(scopes: frozenset[Scope]) -> bool:
    return all(not scopes.isdisjoint(needed) for needed in FIELDS.values())


def _denied(
    info: Info[Any, Any], definition: StrawberryObjectDefinition, selections: list[Selection], scopes: frozenset[Scope]
) -> list[str]:
    """The selected fields (coordinates) in FIELDS that a key with these scopes may not read."""
    denied: list[str] = []
    fields = _fields_of(definition)
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name.startswith("__"):
                continue
            coordinate = f"{definition.name}.{selection.name}"
            needed = FIELDS.get(coordinate)
            if needed is not None and scopes.isdisjoint(needed):
                denied.append(coordinate)
                continue
            field = fields.get(selection.name)
            child = _object_of(field.type) if field is not None else None
            if child is not None and selection.selections:
                denied += _denied(info, child, selection.selections, scopes)
        elif isinstance(selection, FragmentSpread | InlineFragment):
            condition = selection.type_condition
            target = definition
            if condition and condition != definition.name:
                named = info.schema.get_type_by_name(condition)
                target = named if isinstance(named, StrawberryObjectDefinition) else None  # type: ignore[assignment]
            if target is not None:
                denied += _denied(info, target, selection.selections, scopes)
    return denied


def _check_fields(root: StrawberryField, info: Info[Any, Any]) -> None:
    """Refuses the operation with FORBIDDEN when it selects a field its key may not read (FIELDS)."""
    principal = getattr(info.context, "principal", None)
    scopes: frozenset[Scope] = principal.scopes if principal is not None else frozenset()
    returned = _object_of(root.type)
    if returned is None or _reads_everything(scopes) or not reaches_restricted(returned):
        return  # the usual case (a checkout's reserve, a router's query) costs two lookups
    selections = [s for root_node in info.selected_fields for s in getattr(root_node, "selections", [])]
    denied = sorted(set(_denied(info, returned, selections, scopes)))
    if denied:
        needed = sorted({s.value for c in denied for s in FIELDS[c]})
        raise GraphQLError(
            f"{', '.join(denied)} need an API key with scope {', '.join(needed)}",
            extensions={"code": "FORBIDDEN", "requiredScopes": needed, "fields": denied},
        )


# --- who acts ---------------------------------------------------------------------------------------


def actor_of(info: Info[Any, Any]) -> Actor:
    """The caller as the services see it: its key, and whether it may act on other keys' reservations."""
    principal = getattr(info.context, "principal", None)
    if principal is None:
        return Actor(key_id=None, sees_all=False)  # not reachable past the scope check; fails closed
    return Actor(key_id=str(principal.key_id), sees_all=Scope.ADMIN in principal.scopes)


def acting(info: Info[Any, Any]) -> Ctx:
    """The services' context for this call: reservations and decisions are then its key's own."""
    ctx: Ctx = info.context.ctx
    return replace(ctx, actor=actor_of(info))


@cache
def _nested_fields(cls: type) -> tuple[str, ...]:
    """The fields of an input type that may hold lists (or input objects that may): the only ones
    worth visiting. Cached per class, so a batch of 1,000 flat events costs one lookup each."""
    definition = get_object_definition(cls)
    if definition is None:
        return tuple(getattr(cls, "__dataclass_fields__", ()))
    nested: list[str] = []
    for f in definition.fields:
        t: Any = f.type
        while isinstance(t, StrawberryOptional):
            t = t.of_type
        if isinstance(t, StrawberryList) or get_object_definition(t) is not None:
            nested.append(f.python_name)
    return tuple(nested)


def count_items(value: Any) -> int:
    """List items in an argument value, nested lists and input objects included."""
    if isinstance(value, list):
        total = len(value)
        for v in value:
            item: type = type(v)
            if item is list:
                total += count_items(v)
            elif hasattr(item, "__strawberry_definition__"):
                for name in _nested_fields(item):  # nothing to visit for a flat input (an event)
                    total += count_items(getattr(v, name))
        return total
    cls: type = type(value)
    if hasattr(cls, "__strawberry_definition__"):  # an input object
        return sum(count_items(getattr(value, name)) for name in _nested_fields(cls))
    return 0


def _check_input_items(info: Info[Any, Any], arguments: dict[str, Any]) -> None:
    """Refuses a call whose arguments hold more list items than `max_input_items` (the body limit
    bounds the request, this bounds the SQL lists one call can cause: PostgreSQL takes at most 32767
    parameters per statement). Raised before the resolver runs, so nothing is read or changed."""
    security = getattr(info.context, "security", None)
    if security is None or not arguments:
        return
    limit: int = security.settings.max_input_items
    total = count_items(list(arguments.values())) - len(arguments)
    if total > limit:
        raise GraphQLError(
            f"{info.path.typename}.{info.field_name}: {total} list items in the arguments; at most {limit}",
            extensions={"code": "INPUT_TOO_LARGE", "limit": limit},
        )


class HoldRateLimit(FieldExtension):
    """Refuses a call with its payload's RATE_LIMITED userError once the key's bucket is empty."""

    def __init__(self, coordinate: str) -> None:
        self.coordinate = coordinate
        self.payload: Any = None

    def apply(self, field: StrawberryField) -> None:
        payload = field.type
        definition = get_object_definition(payload, strict=True)
        names = {f.python_name for f in definition.fields}
        if "user_errors" not in names:
            raise TypeError(f"{self.coordinate}: a rate-limited mutation needs a payload with userErrors")
        self.payload = payload
        # the payload's other fields when refused: an empty list for a list (they are non-null), else null
        self.others: dict[str, list[Any] | None] = {
            f.python_name: [] if isinstance(f.type, StrawberryList) else None
            for f in definition.fields
            if f.python_name != "user_errors"
        }

    async def resolve_async(  # type: ignore[override]
        self, next_: AsyncExtensionResolver, source: Any, info: Info[Any, Any], /, **kwargs: Any
    ) -> Any:
        security = getattr(info.context, "security", None)
        principal = getattr(info.context, "principal", None)
        refusal = _hold_refusal(security, principal, tenant_of(info)) if security and principal else None
        if refusal is not None:
            error = UserError(code="RATE_LIMITED", message=refusal, field=None)
            return self.payload(
                **{name: empty if empty is None else [] for name, empty in self.others.items()}, user_errors=[error]
            )
        return await next_(source, info, **kwargs)


def _hold_refusal(security: Any, principal: Any, tenant_id: int | None) -> str | None:
    """Why one more hold is refused now (the key's bucket, then its tenant's), or None: taken."""
    window = security.settings.hold_rate_window_seconds
    if not security.holds.allow(principal.key_id):
        wait = security.holds.retry_after(principal.key_id)
        return f"this key made more than {security.holds.limit} holds in {window:g} s; retry in {wait:.1f} s"
    tenant = str(tenant_id)
    if not security.tenant_holds.allow(tenant):
        wait = security.tenant_holds.retry_after(tenant)
        return f"this tenant made more than {security.tenant_holds.limit} holds in {window:g} s; retry in {wait:.1f} s"
    return None


def graphql_name(field: StrawberryField) -> str:
    return field.graphql_name or to_camel_case(field.python_name)


def root_fields(*types: type | None) -> list[tuple[str, StrawberryField]]:
    """(`Type.field` coordinate, field) for every field of the given root types."""
    found: list[tuple[str, StrawberryField]] = []
    for t in types:
        if t is None:
            continue
        definition: StrawberryObjectDefinition = get_object_definition(t, strict=True)
        found.extend((f"{definition.name}.{graphql_name(f)}", f) for f in definition.fields)
    return found


def required_scopes(field: StrawberryField) -> frozenset[Scope] | None:
    """The scopes a secured root field accepts (None: the field carries no scope check)."""
    for extension in field.extensions:
        if isinstance(extension, PermissionExtension):
            for permission in extension.permissions:
                if isinstance(permission, HasScope):
                    return permission.scopes
    return None


def secure(*types: type | None) -> None:
    """Attach the scope check (and the hold rate limit) to every root field. Idempotent."""
    for coordinate, field in root_fields(*types):
        if required_scopes(field) is not None:
            continue  # already secured (the same class in a schema built earlier)
        if coordinate in HOLDS:
            field.extensions.append(HoldRateLimit(coordinate))
        # appended last: the outermost extension, so the scope is checked before anything else runs
        field.extensions.append(
            ScopeCheck([HasScope(coordinate, REQUIRED.get(coordinate, frozenset()))], use_directives=False)
        )


def idempotency_scope(info: Info[Any, Any]) -> str:
    """Idempotency keys are per API key: two clients' "order-1" never collide or see each other's hold."""
    principal = getattr(info.context, "principal", None)
    return "" if principal is None else str(principal.key_id)
