from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

import strawberry
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
