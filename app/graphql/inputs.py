from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import strawberry
from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    OperationDefinitionNode,
    Undefined,
)
from graphql.execution.get_variable_signature import get_variable_signature
from graphql.utilities.coerce_input_value import coerce_default_value
from strawberry.types.arguments import InputContext
from strawberry.types.base import StrawberryList, StrawberryOptional
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

from app.graphql.types import InventoryEventType, LocationKind

T = TypeVar("T", bound=type)
T_co = TypeVar("T_co")
_LEAVES = (str, int, float, bool, datetime)


def flat_input(cls: T) -> T:
    """An input of scalars and enums only (or lists of such inputs), built straight from the value
    graphql-core has coerced.

    graphql-core has already parsed every scalar and enum of the input; Strawberry's general
    converter would walk each field again (a tenth of recordInventoryEvents' CPU, profiled under the
    push benchmark; about a tenth of a reserve's GraphQL execution, ReserveInput). Refused at import
    for an input with a field that is not a scalar, an enum or a list of flat inputs.
    """
    definition = cls.__strawberry_definition__  # type: ignore[attr-defined]
    items: dict[str, Any] = {}  # Python name -> the flat input type of a list field's items
    for field in definition.fields:
        of = field.type.of_type if isinstance(field.type, StrawberryOptional) else field.type
        item: Any = of.of_type if isinstance(of, StrawberryList) else None
        if item is not None and getattr(getattr(item, "__strawberry_definition__", None), "from_input", None):
            items[field.python_name] = item
        elif not (of in _LEAVES or isinstance(of, StrawberryEnumDefinition) or has_enum_definition(of)):
            raise TypeError(f"{cls.__name__}.{field.python_name} is not a scalar, an enum or a list of flat inputs")
    names: list[tuple[str, str]] = []  # (GraphQL name, Python name), with the schema's name converter

    def build(type_: type, value: Mapping[str, Any], context: InputContext) -> Any:
        if not names:
            names.extend((context.config.name_converter.from_field(f), f.python_name) for f in definition.fields)
        kwargs = {python: value[graphql] for graphql, python in names if graphql in value}
        for python, item in items.items():
            given = kwargs.get(python)
            if given is not None:
                made = item.__strawberry_definition__.from_input
                kwargs[python] = [None if v is None else made(item, v, context) for v in given]
        return type_(**kwargs)

    definition.from_input = build
    return cls


@strawberry.input
class SkuInput:
    code: str
    name: str
    active: bool | None = None


@strawberry.input
class LocationInput:
    code: str
    name: str
    kind: LocationKind
    latitude: float | None = None
    longitude: float | None = None
    priority: int | None = None
    active: bool | None = None
    count_authority: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="Source whose COUNTED events this location trusts (others are FLAGGED); "
        "null clears it (counts from every source apply), omitted keeps it",
    )


@flat_input
@strawberry.input
class InventoryEventInput:
    source: str
    external_id: str
    type: InventoryEventType
    sku_code: str
    location_code: str
    quantity: int
    occurred_at: datetime
    reason: str | None = None
    reference: str | None = None
    to_location_code: str | None = None
    expected_at: datetime | None = None
    unit: str | None = strawberry.field(default=None, description="Sell unit of `quantity`; stored in base units")


@flat_input
@strawberry.input
class ReserveLineInput:
    sku_code: str
    quantity: int
    location_code: str | None = None
    unit: str | None = strawberry.field(default=None, description="Sell unit of `quantity` (default: each)")


@flat_input
@strawberry.input
class ReserveInput:
    lines: list[ReserveLineInput]
    idempotency_key: str
    ttl_seconds: int | None = None
    channel_code: str | None = None
    cart_ref: str | None = None
    account_code: str | None = strawberry.field(default=None, description="The B2B account the hold is for")
    allow_partial: bool = strawberry.field(
        default=False, description="Hold what the channel's figure allows and backorder within its rules"
    )


def given(value: T_co) -> T_co | None:
    """An optional input field's value, None when omitted (see `nulled` for the fields given as null)."""
    return None if value is strawberry.UNSET else value


def nulled(item: object, fields: frozenset[str]) -> frozenset[str]:
    """The `fields` of an input given as an explicit null: null clears a setting, omitting it keeps it."""
    return frozenset(f for f in fields if getattr(item, f) is None)


# --- variables of flat inputs, coerced in one pass ---------------------------------------------------
#
# graphql-core coerces a variable value by walking it against its type, recursing into every field of
# every item (and first walks it once more to see it is not nested too deeply): about a third of the
# server's CPU for recordInventoryEvents' 500 event inputs, and about 20 us of a reserve's ReserveInput.
# An input that is *flat* (every field a scalar, an enum or a list of flat input objects, no oneOf) or a
# list of such inputs needs none of that generality: `coerce_flat_list` and `coerce_flat_object` read it
# in one loop and give exactly graphql-core's coerced value (the same dict per object: fields in the
# type's order under their out names, omitted fields with their coerced defaults, each leaf parsed by
# its own type). Any value they are not sure of (a missing or unknown field, a null where one is not
# allowed, a scalar that is not plainly of its type, an object that is not a dict, a list that is not
# a list) gives None, and graphql-core coerces that variable itself, with its own errors.

_MISSING = object()
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class _NotSure(Exception):
    """A value the fast path leaves to graphql-core."""


def _parse_string(value: Any) -> Any:
    if type(value) is not str:
        raise _NotSure  # graphql-core decides (it refuses it)
    return value


def _parse_int(value: Any) -> Any:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise _NotSure  # a float, a bool or out of range: graphql-core decides
    return value


def _parse_boolean(value: Any) -> Any:
    if type(value) is not bool:
        raise _NotSure
    return value


def _leaf_parser(leaf: GraphQLScalarType | GraphQLEnumType) -> Callable[[Any], Any]:
    """The leaf's own coercion; String, Int and Boolean inline (graphql-core's for a plain str, int or
    bool), an enum's remembered per name (the same member each time)."""
    if leaf is GraphQLString:
        return _parse_string
    if leaf is GraphQLInt:
        return _parse_int
    if leaf is GraphQLBoolean:
        return _parse_boolean
    if isinstance(leaf, GraphQLEnumType):
        members: dict[str, Any] = {}

        def parse_enum(value: Any) -> Any:
            if type(value) is not str:
                raise _NotSure
            member = members.get(value, _MISSING)
            if member is _MISSING:
                member = members[value] = leaf.coerce_input_value(value)  # raises for no such name
            return member

        return parse_enum
    return leaf.coerce_input_value


@dataclass(frozen=True)
class _FlatField:
    name: str
    out: str
    nullable: bool
    default: Any  # the coerced default, Undefined without one (then the field is left out when omitted)
    parse: Callable[[Any], Any]


@dataclass(frozen=True)
class _Plan:
    """How to read an object of a flat input type."""

    fields: tuple[_FlatField, ...]
    known: frozenset[str]  # the fields' names: any other name is graphql-core's to refuse
    out_type: Callable[[dict[str, Any]], Any]


_plans: dict[tuple[GraphQLInputObjectType, bool], _Plan | None] = {}


def _plan(type_: GraphQLInputObjectType, nested: bool = True) -> _Plan | None:
    """How to read an object of a flat input type; None when the type is not flat. `nested`: whether a
    field may be a list of flat inputs (one level: the items' own fields are scalars or enums)."""
    key = (type_, nested)
    if key in _plans:
        return _plans[key]
    fields: list[_FlatField] | None = []
    if type_.is_one_of:
        fields = None
    for name, field in type_.fields.items():
        of = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        parse: Callable[[Any], Any] | None = None
        if isinstance(of, (GraphQLScalarType, GraphQLEnumType)):
            parse = _leaf_parser(of)
        elif nested and isinstance(of, GraphQLList):
            parse = _list_parser(of)
        if fields is None or parse is None:
            fields = None
            break
        default = coerce_default_value(field)
        if default is Undefined and isinstance(field.type, GraphQLNonNull):
            default = _MISSING  # required
        nullable = not isinstance(field.type, GraphQLNonNull)
        fields.append(_FlatField(name, field.out_name or name, nullable, default, parse))
    plan = None if fields is None else _Plan(tuple(fields), frozenset(f.name for f in fields), type_.out_type)
    _plans[key] = plan
    return plan


_list_parsers: dict[tuple[GraphQLInputObjectType, bool], Callable[[Any], Any] | None] = {}


def _list_parser(list_type: GraphQLList[Any]) -> Callable[[Any], Any] | None:
    """The coercion of a list of flat input objects (items without lists of their own), None for any
    other list."""
    item_type = list_type.of_type
    items_nullable = not isinstance(item_type, GraphQLNonNull)
    object_type = item_type if items_nullable else item_type.of_type
    if not isinstance(object_type, GraphQLInputObjectType):
        return None
    key = (object_type, items_nullable)
    if key in _list_parsers:
        return _list_parsers[key]
    plan = _plan(object_type, nested=False)
    parse_list: Callable[[Any], Any] | None = None
    if plan is not None:
        items = plan

        def parse_list(value: Any) -> Any:
            if type(value) is not list:
                raise _NotSure  # graphql-core reads a single value as a list of one, or refuses it
            return [None if item is None and items_nullable else _coerce_object(item, items) for item in value]

    _list_parsers[key] = parse_list
    return parse_list


def _coerce_object(item: Any, plan: _Plan) -> Any:
    if type(item) is not dict or not plan.known.issuperset(item):
        raise _NotSure
    fields: dict[str, Any] = {}
    for f in plan.fields:
        given = item.get(f.name, _MISSING)
        if given is _MISSING:
            if f.default is _MISSING:
                raise _NotSure
            if f.default is not Undefined:
                fields[f.out] = f.default
        elif given is None:
            if not f.nullable:
                raise _NotSure
            fields[f.out] = None
        else:
            parsed = f.parse(given)
            if parsed is None or parsed is Undefined:
                raise _NotSure  # a parser's "no value": graphql-core decides
            fields[f.out] = parsed
    return plan.out_type(fields)


def coerce_flat_list(value: Any, type_: GraphQLInputType) -> Any:
    """graphql-core's coerce_input_value(value, type_) for a list of flat input objects, or None when
    type_ is not one or the value is not plainly valid (see above)."""
    list_type = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if not isinstance(list_type, GraphQLList):
        return None
    parse = _list_parser(list_type)
    if parse is None:
        return None
    try:
        return parse(value)
    except Exception:  # any doubt: graphql-core coerces it (and reports its errors)
        return None


def coerce_flat_object(value: Any, type_: GraphQLInputType) -> Any:
    """graphql-core's coerce_input_value(value, type_) for one flat input object (ReserveInput: its
    lines a list of flat inputs), or None when type_ is not one or the value is not plainly valid."""
    object_type = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if not isinstance(object_type, GraphQLInputObjectType):
        return None
    plan = _plan(object_type)
    if plan is None:
        return None
    try:
        return _coerce_object(value, plan)
    except Exception:  # any doubt: graphql-core coerces it (and reports its errors)
        return None


def coerce_flat_variables(
    schema: GraphQLSchema, operation: OperationDefinitionNode | None, raw: dict[str, Any] | None
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any] | None]:
    """The operation's variables that are flat inputs or lists of them, coerced here: (name -> (the
    variable's signature, its coerced value)) and the raw values of the others, for graphql-core
    (CostLimitedExecutor.build has it coerce only those, and puts these values in). Variables these
    functions are not sure of are left to graphql-core."""
    if operation is None or not raw or not operation.variable_definitions:
        return {}, raw
    done: dict[str, tuple[Any, Any]] = {}
    for definition in operation.variable_definitions:
        name = definition.variable.name.value
        value = raw.get(name, Undefined)
        kind = type(value)
        if not ((kind is list and value) or kind is dict):
            continue
        signature = get_variable_signature(schema, definition)
        if isinstance(signature, GraphQLError):
            continue
        coerced = coerce_flat_list(value, signature.type) if kind is list else coerce_flat_object(value, signature.type)
        if coerced is not None:
            done[name] = (signature, coerced)
    if not done:
        return {}, raw
    return done, {name: value for name, value in raw.items() if name not in done}
