from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import strawberry
from graphql import (
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
# server's CPU for recordInventoryEvents' 500 event inputs. A list of *flat* input objects (every field
# a scalar or an enum, no oneOf) needs none of that generality: `coerce_flat_list` reads it in one
# loop and gives exactly graphql-core's coerced value (the same dict per item: fields in the type's
# order under their out names, omitted fields with their coerced defaults, each leaf parsed by its own
# type). Any value it is not sure of (a missing or unknown field, a null where one is not allowed, a
# scalar that is not plainly of its type, an item that is not a dict, a value that is not a list) gives
# None, and graphql-core coerces that variable itself, with its own errors.

_MISSING = object()
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _parse_string(value: Any) -> Any:
    if type(value) is not str:
        raise TypeError  # graphql-core decides (it refuses it)
    return value


def _parse_int(value: Any) -> Any:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise TypeError  # a float, a bool or out of range: graphql-core decides
    return value


def _leaf_parser(leaf: GraphQLScalarType | GraphQLEnumType) -> Callable[[Any], Any]:
    """The leaf's own coercion; String and Int inline (graphql-core's for a plain str or int), an
    enum's remembered per name (the same member each time)."""
    if leaf is GraphQLString:
        return _parse_string
    if leaf is GraphQLInt:
        return _parse_int
    if isinstance(leaf, GraphQLEnumType):
        members: dict[str, Any] = {}

        def parse_enum(value: Any) -> Any:
            if type(value) is not str:
                raise TypeError
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


_plans: dict[GraphQLInputObjectType, tuple[_FlatField, ...] | None] = {}


def _plan(type_: GraphQLInputObjectType) -> tuple[_FlatField, ...] | None:
    """How to read an item of a flat input type; None when the type is not flat."""
    if type_ in _plans:
        return _plans[type_]
    fields: list[_FlatField] | None = []
    if type_.is_one_of:
        fields = None
    for name, field in type_.fields.items():
        of = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        if fields is None or not isinstance(of, (GraphQLScalarType, GraphQLEnumType)):
            fields = None
            break
        default = coerce_default_value(field)
        if default is Undefined and isinstance(field.type, GraphQLNonNull):
            default = _MISSING  # required
        fields.append(
            _FlatField(
                name, field.out_name or name, not isinstance(field.type, GraphQLNonNull), default, _leaf_parser(of)
            )
        )
    plan = None if fields is None else tuple(fields)
    _plans[type_] = plan
    return plan


def coerce_flat_list(value: Any, type_: GraphQLInputType) -> Any:
    """graphql-core's coerce_input_value(value, type_) for a list of flat input objects, or None when
    type_ is not one or the value is not plainly valid (see above)."""
    list_type = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if not isinstance(list_type, GraphQLList) or type(value) is not list:
        return None
    item_type = list_type.of_type
    items_nullable = not isinstance(item_type, GraphQLNonNull)
    object_type = item_type if items_nullable else item_type.of_type
    if not isinstance(object_type, GraphQLInputObjectType):
        return None
    plan = _plan(object_type)
    if plan is None:
        return None
    known = {f.name for f in plan}
    out_type = object_type.out_type
    coerced: list[Any] = []
    try:
        for item in value:
            if item is None and items_nullable:
                coerced.append(None)
                continue
            if type(item) is not dict or not known.issuperset(item):
                return None
            fields: dict[str, Any] = {}
            for f in plan:
                given = item.get(f.name, _MISSING)
                if given is _MISSING:
                    if f.default is _MISSING:
                        return None
                    if f.default is not Undefined:
                        fields[f.out] = f.default
                elif given is None:
                    if not f.nullable:
                        return None
                    fields[f.out] = None
                else:
                    parsed = f.parse(given)
                    if parsed is None or parsed is Undefined:
                        return None  # a parser's "no value": graphql-core decides
                    fields[f.out] = parsed
            coerced.append(out_type(fields))
    except Exception:  # any doubt: graphql-core coerces it (and reports its errors)
        return None
    return coerced


def coerce_flat_variables(
    schema: GraphQLSchema, operation: OperationDefinitionNode | None, raw: dict[str, Any] | None
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any] | None]:
    """The operation's variables that are lists of flat inputs, coerced here: (name -> (the variable's
    signature, its coerced value)) and the raw values to give graphql-core instead, with an empty list
    for each of those (it coerces that to [] at once; CostLimitedExecutor.build puts the values back).
    Variables coerce_flat_list is not sure of are left to graphql-core."""
    if operation is None or not raw or not operation.variable_definitions:
        return {}, raw
    done: dict[str, tuple[Any, Any]] = {}
    for definition in operation.variable_definitions:
        name = definition.variable.name.value
        value = raw.get(name, Undefined)
        if type(value) is not list or not value:
            continue
        signature = get_variable_signature(schema, definition)
        if isinstance(signature, GraphQLError):
            continue
        coerced = coerce_flat_list(value, signature.type)
        if coerced is not None:
            done[name] = (signature, coerced)
    if not done:
        return {}, raw
    return done, {name: [] if name in done else value for name, value in raw.items()}
