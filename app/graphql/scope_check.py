"""The scope check applied to every root field when the schema is built (`secure`).

The scopes come from app/graphql/scope_table.py; a key without one is refused with FORBIDDEN.
Past the root it checks the selected fields (app/graphql/field_scopes.py) and the list items in the
arguments, and tells the services which key acts (`acting`), for ownership and the ledger.

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

from app.compat import refuse
from app.db import tenancy
from app.graphql.field_scopes import _check_fields, graphql_name
from app.graphql.scope_table import HOLDS, REQUIRED
from app.graphql.types import UserError
from app.security.scopes import Scope
from app.services.context import Actor, Ctx, acting_on_ledger


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
