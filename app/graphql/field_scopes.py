"""Field-level scopes: refuses an operation that selects a field (FIELDS) its key may not read,
before it runs, by walking the selection over the types the root field returns."""

from __future__ import annotations

from functools import cache
from typing import Any

from graphql import GraphQLError
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

from app.graphql.scope_table import FIELDS
from app.security.scopes import Scope


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


def graphql_name(field: StrawberryField) -> str:
    return field.graphql_name or to_camel_case(field.python_name)
