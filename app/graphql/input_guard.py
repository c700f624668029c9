"""Every argument of every root field checked against what the database can store, before a resolver runs.

PostgreSQL refuses NUL in text and lone surrogates (they cannot be encoded as UTF-8), `varchar(n)`
refuses n + 1 characters, and a datetime beyond year 1..9999 once converted to UTC overflows
Python's datetime; each of these used to reach the database and come back as a fault (HTTP 500,
a traceback in the log). Here they become a typed refusal of the input, whatever way the value came:
a JSON variable, a literal in the document (`"\\u{0}"`), a GET query string.

One table knows the lengths (`_LENGTHS`), taken from the columns in app/db/tables.py the values end
up in, and one the accepted time ranges (`_TIMES`). A mutation whose payload has `userErrors`
answers with an INVALID_INPUT userError naming the field (the contract: expected refusals are
userErrors); other fields (queries, subscriptions) with a GraphQL error coded BAD_USER_INPUT.

Root arguments that are lists of codes are de-duplicated on the way (a code asked for twice is
read once).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, cast

from graphql import GraphQLError
from sqlalchemy import Column, String
from strawberry.extensions.field_extension import AsyncExtensionResolver, FieldExtension
from strawberry.types import Info
from strawberry.types.base import StrawberryList, StrawberryOptional, get_object_definition
from strawberry.types.field import StrawberryField
from strawberry.types.unset import UnsetType
from strawberry.utils.str_converters import to_camel_case

from app.db import tables as t
from app.graphql.types import UserError

INVALID_INPUT = "INVALID_INPUT"
BAD_USER_INPUT = "BAD_USER_INPUT"

# --- what the database can store --------------------------------------------------------------------

# input field or argument -> the column its value is stored in (or compared with). Keys are
# "Type.field" (an input type's field, or "Root.argument" for a root field's argument) or a bare
# field name, which applies wherever no "Type.field" entry does.
_COLUMNS: dict[str, Column[Any]] = {
    "skuCode": t.skus.c.code,
    "skuCodes": t.skus.c.code,
    "locationCode": t.locations.c.code,
    "locationCodes": t.locations.c.code,
    "toLocationCode": t.locations.c.code,
    "channelCode": t.channels.c.code,
    "source": t.inventory_events.c.source,
    "externalId": t.inventory_events.c.external_id,
    "ExternalHoldInput.externalId": t.external_holds.c.external_id,
    "idempotencyKey": t.reservations.c.idempotency_key,
    "cartRef": t.reservations.c.cart_ref,
    "orderRef": t.reservations.c.order_ref,
    "countAuthority": t.locations.c.count_authority,
    "SkuInput.code": t.skus.c.code,
    "SkuInput.name": t.skus.c.name,
    "LocationInput.code": t.locations.c.code,
    "LocationInput.name": t.locations.c.name,
    "ChannelInput.code": t.channels.c.code,
    "ChannelInput.name": t.channels.c.name,
    "CreateApiKeyInput.name": t.api_keys.c.name,
    "Query.locations.codes": t.locations.c.code,
    "Query.locationRouting.codes": t.locations.c.code,
    "Query.channels.codes": t.channels.c.code,
}


def _length(column: Column[Any]) -> int:
    if not isinstance(column.type, String) or column.type.length is None:
        raise TypeError(f"{column} has no length")
    return column.type.length


_LENGTHS: dict[str, int] = {name: _length(column) for name, column in _COLUMNS.items()}

# The accepted time range of each datetime input (README.md, Limits). Event times before 2000 are
# typos (year 1, 0026) rather than history, and one more than a year ahead is a clock or format bug;
# a hold may be kept for years, and an expected delivery is a plan (integrations send placeholders
# like 2099-01-10 for "no date yet"), so that one is only kept inside this century.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_TIMES: dict[str, timedelta | datetime] = {  # name -> how far after now it may lie, or the latest
    "occurredAt": timedelta(days=366),
    "takenAt": timedelta(days=366),
    "expiresAt": timedelta(days=5 * 366),
    "expectedAt": datetime(2100, 1, 1, tzinfo=UTC),
}
_DEFAULT_AHEAD = timedelta(days=5 * 366)

# integer arguments whose range the schema cannot say (GraphQL Int is any 32-bit value)
_INTS: dict[str, tuple[int, int]] = {
    "Query.orphanedHolds.committedOlderThanDays": (0, 36_500),  # 100 years: beyond it, dates overflow
}


class Refusal(Exception):
    def __init__(self, field: list[str], message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _rule(table: dict[str, Any], owner: str, name: str) -> Any:
    hit = table.get(f"{owner}.{name}")
    return table.get(name) if hit is None else hit


@cache
def _limit(owner: str, name: str) -> int | None:
    """The length limit of `owner.name` (or of `name` anywhere), None without one."""
    limit: int | None = _rule(_LENGTHS, owner, name)
    return limit


def _check_str(value: str, owner: str, name: str, path: list[str]) -> None:
    if "\x00" in value:
        raise Refusal(path, f"{name} may not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refusal(path, f"{name} is not valid Unicode (a lone surrogate)") from None
    limit = _limit(owner, name)
    if limit is not None and len(value) > limit:
        raise Refusal(path, f"{name} must be at most {limit} characters")


def _check_time(value: datetime, name: str, path: list[str], now: datetime | None = None) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise Refusal(path, f"{name} needs a time zone (e.g. 2026-01-01T09:00:00Z)")
    ahead = _TIMES.get(name, _DEFAULT_AHEAD)
    latest = ahead if isinstance(ahead, datetime) else (now or datetime.now(UTC)) + ahead
    try:
        inside = EARLIEST <= value.astimezone(UTC) <= latest
    except OverflowError:  # beyond year 1..9999 once in UTC
        inside = False
    if not inside:
        raise Refusal(path, f"{name} must lie between {EARLIEST:%Y-%m-%d} and {latest:%Y-%m-%d} (UTC)")


@cache
def _fields(cls: Any) -> tuple[tuple[str, str], ...]:
    """(Python name, GraphQL name) of an input type's fields."""
    definition = get_object_definition(cls, strict=True)
    return tuple((f.python_name, f.graphql_name or to_camel_case(f.python_name)) for f in definition.fields)


class _Walk:
    """One argument's check. The path of the value being checked is only spelt out for a refusal:
    a container adds its index or field name to the refusal's path on the way out, so a list of 500
    inputs builds no path at all when every value is fine (recordInventoryEvents)."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now: datetime | None = None  # read once per argument, for the time ranges

    def check(self, value: Any, owner: str, name: str) -> None:
        kind = type(value)
        if kind is str or isinstance(value, str):
            _check_str(value, owner, name, [])
        elif kind is datetime:
            if self.now is None:
                self.now = datetime.now(UTC)
            _check_time(value, name, [], self.now)
        elif kind is int:
            bounds = _rule(_INTS, owner, name)
            if bounds is not None and not bounds[0] <= value <= bounds[1]:
                raise Refusal([], f"{name} must be between {bounds[0]} and {bounds[1]}")
        elif kind is list:
            for i, item in enumerate(value):
                try:
                    self.check(item, owner, name)
                except Refusal as refusal:
                    refusal.field.insert(0, str(i))
                    raise
        elif hasattr(kind, "__strawberry_definition__"):
            type_name = kind.__strawberry_definition__.name
            for python, graphql in _fields(cast(Hashable, kind)):
                field = getattr(value, python)
                if field is None:
                    continue  # nothing to store: no rule applies
                if type(field) is str and field.isascii() and "\x00" not in field:
                    # the common case inline: an ASCII text without NUL only has its length to check
                    limit = _limit(type_name, graphql)
                    if limit is None or len(field) <= limit:
                        continue
                try:
                    self.check(field, type_name, graphql)
                except Refusal as refusal:
                    refusal.field.insert(0, graphql)
                    raise


def _check(value: Any, owner: str, name: str, path: list[str]) -> None:
    """Raises Refusal (its field: `path` and the way to the value) when `value` cannot be stored."""
    try:
        _Walk().check(value, owner, name)
    except Refusal as refusal:
        refusal.field[:0] = path
        raise


def check_arguments(coordinate: str, arguments: dict[str, Any], names: dict[str, str]) -> None:
    """Raises Refusal for the first argument value the database could not take. `names`: Python -> GraphQL."""
    for python, value in arguments.items():
        if value is None or isinstance(value, UnsetType):
            continue
        graphql = names.get(python, python)
        _check(value, coordinate, graphql, [graphql])


def _deduplicated(arguments: dict[str, Any]) -> dict[str, Any]:
    for name, value in arguments.items():
        if type(value) is list and len(value) > 1 and all(type(v) is str for v in value):
            arguments[name] = list(dict.fromkeys(value))
    return arguments


# --- the field extension ---------------------------------------------------------------------------


@dataclass
class _Payload:
    make: Callable[..., Any]
    empty: dict[str, Any]


def _payload(field: StrawberryField) -> _Payload | None:
    """How to answer a refusal with the field's payload type (None: it has no userErrors)."""
    definition = get_object_definition(field.type, strict=False)
    if definition is None or "user_errors" not in {f.python_name for f in definition.fields}:
        return None
    empty: dict[str, Any] = {}
    for f in definition.fields:
        if f.python_name == "user_errors":
            continue
        if isinstance(f.type, StrawberryList):
            empty[f.python_name] = []
        elif isinstance(f.type, StrawberryOptional):
            empty[f.python_name] = None
        elif f.type is int:
            empty[f.python_name] = 0  # a count (rows, matched): nothing was done
        else:
            return None  # no honest empty value: answer with a GraphQL error instead
    return _Payload(definition.origin, empty)


class InputGuard(FieldExtension):
    """Checks a root field's arguments (see the module's docstring) before its resolver runs."""

    def __init__(self, coordinate: str) -> None:
        self.coordinate = coordinate
        self.payload: _Payload | None = None
        self.names: dict[str, str] = {}

    def apply(self, field: StrawberryField) -> None:
        self.payload = _payload(field)
        self.names = {a.python_name: a.graphql_name or to_camel_case(a.python_name) for a in field.arguments}

    def _refused(self, refusal: Refusal) -> Any:
        if self.payload is not None:
            error = UserError(code=INVALID_INPUT, message=refusal.message, field=refusal.field)
            return self.payload.make(**self.payload.empty, user_errors=[error])
        raise GraphQLError(
            f"{self.coordinate}: {refusal.message}",
            extensions={"code": BAD_USER_INPUT, "field": refusal.field},
        )

    def resolve(self, next_: Callable[..., Any], source: Any, info: Info[Any, Any], /, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            check_arguments(self.coordinate, kwargs, self.names)
        except Refusal as refusal:
            return self._refused(refusal)
        return next_(source, info, **_deduplicated(kwargs))

    async def resolve_async(  # type: ignore[override]
        self, next_: AsyncExtensionResolver, source: Any, info: Info[Any, Any], /, **kwargs: Any
    ) -> Any:
        try:
            check_arguments(self.coordinate, kwargs, self.names)
        except Refusal as refusal:
            return self._refused(refusal)
        result = next_(source, info, **_deduplicated(kwargs))
        return result if inspect.isasyncgen(result) else await result


def guard(fields: list[tuple[str, StrawberryField]]) -> None:
    """Gives every root field an InputGuard, inside the scope check (a key without the scope learns
    nothing about its input). Idempotent: the field classes are shared by every schema built."""
    for coordinate, field in fields:
        if any(isinstance(e, InputGuard) for e in field.extensions):
            continue
        field.extensions.insert(0, InputGuard(coordinate))
