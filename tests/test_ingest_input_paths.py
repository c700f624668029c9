"""The fast paths of an ingested batch's input (issue 15, target 5) accept and refuse exactly what the
general ones did: the DateTime parser against dateutil's isoparse (Strawberry's own), and the input
guard's walk over a list of event inputs (the refusal's message and the field path to the value)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dateutil.parser  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strawberry.schema.types.base_scalars import DateTimeDefinition

from app.graphql.input_guard import Refusal, check_arguments
from app.graphql.inputs import InventoryEventInput
from app.graphql.schema import build_schema
from app.graphql.types import DATETIME, InventoryEventType, parse_datetime


def _outcome(parse: object, value: str) -> tuple[str, object]:
    try:
        at = parse(value)  # type: ignore[operator]
    except ValueError as exc:
        return "refused", str(exc)
    return "read", (at, at.utcoffset())


SPELLINGS = [
    "2026-01-01T09:00:00Z",
    "2026-01-01T09:00:00+00:00",
    "2026-01-01T09:00:00-00:00",
    "2026-01-01T09:00:00.5Z",
    "2026-01-01T09:00:00.123456+05:30",
    "2026-01-01T09:00:00.000001-09:30",
    "2026-12-31T23:59:59.999999+14:00",
    "2026-01-01T24:00:00Z",  # dateutil reads hour 24 as the next midnight; fromisoformat (3.11) refuses it
    "2026-01-01T09:00:60Z",
    "2026-13-01T09:00:00Z",
    "2026-02-30T09:00:00Z",
    "2026-01-01T09:00:00+24:00",
    "2026-01-01T09:00:00+23:59",
    "2026-01-01T09:00:00",  # naive: read, then refused by the input guard
    "2026-01-01T09:00:00.1234567Z",
    "20260101T090000Z",
    "2026-01-01",
    "2026-01-01 09:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "",
    "not a date",
]


@pytest.mark.parametrize("value", SPELLINGS)
def test_datetime_reads_as_dateutil_does(value: str) -> None:
    assert _outcome(parse_datetime, value) == _outcome(dateutil.parser.isoparse, value)


digits = st.integers(min_value=0, max_value=99).map(lambda n: f"{n:02d}")


@given(
    year=st.integers(min_value=0, max_value=9999),
    month=digits,
    day=digits,
    hour=digits,
    minute=digits,
    second=digits,
    fraction=st.sampled_from(["", ".0", ".5", ".12", ".123", ".999999", ".000001"]),
    offset=st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", "-12:45", "+23:59", "+24:00", "-99:99"]),
)
def test_plain_iso_forms_read_as_dateutil_does(
    year: int, month: str, day: str, hour: str, minute: str, second: str, fraction: str, offset: str
) -> None:
    value = f"{year:04d}-{month}-{day}T{hour}:{minute}:{second}{fraction}{offset}"
    assert _outcome(parse_datetime, value) == _outcome(dateutil.parser.isoparse, value)


def test_the_schema_reads_datetime_with_it_and_refuses_as_strawberry_did() -> None:
    scalar = build_schema()._schema.get_type("DateTime")
    at = scalar.parse_value("2026-01-01T09:00:00Z")  # type: ignore[union-attr]
    assert at == datetime(2026, 1, 1, 9, tzinfo=UTC)
    for bad in ("2026-13-01T09:00:00Z", "yesterday", 5):
        with pytest.raises(Exception) as ours:
            DATETIME.parse_value(bad)  # type: ignore[misc]
        with pytest.raises(Exception) as strawberrys:
            DateTimeDefinition.parse_value(bad)  # type: ignore[misc]
        assert (type(ours.value), str(ours.value)) == (type(strawberrys.value), str(strawberrys.value))


def _event(**changes: object) -> InventoryEventInput:
    fields: dict[str, object] = {
        "source": "pos",
        "external_id": "e-1",
        "type": InventoryEventType.SOLD,
        "sku_code": "SKU-1",
        "location_code": "WH-1",
        "quantity": 1,
        "occurred_at": datetime.now(UTC),
    }
    return InventoryEventInput(**(fields | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"external_id": "x" * 201}, "externalId", "externalId must be at most 200 characters"),
        ({"sku_code": "SKU\x00"}, "skuCode", "skuCode may not contain NUL characters"),
        ({"reason": "bad \ud800"}, "reason", "reason is not valid Unicode (a lone surrogate)"),
        ({"location_code": "é" * 101}, "locationCode", "locationCode must be at most 100 characters"),
        ({"occurred_at": datetime(2026, 1, 1, 9)}, "occurredAt", "occurredAt needs a time zone"),
        ({"occurred_at": datetime.now(UTC) + timedelta(days=400)}, "occurredAt", "occurredAt must lie between"),
        ({"expected_at": datetime(2100, 1, 2, tzinfo=UTC)}, "expectedAt", "expectedAt must lie between"),
    ],
)
def test_the_guard_names_the_event_and_field_of_a_bad_value(
    changes: dict[str, object], field: str, message: str
) -> None:
    batch = [_event(external_id=f"e-{i}") for i in range(5)]
    batch[3] = _event(**changes)
    with pytest.raises(Refusal) as refused:
        check_arguments("Mutation.recordInventoryEvents", {"input": batch, "atomic": True}, {"input": "input"})
    assert refused.value.field == ["input", "3", field]
    assert refused.value.message.startswith(message)


def test_the_guard_passes_a_batch_of_good_events_and_keeps_their_paths_apart() -> None:
    batch = [_event(external_id=f"e-{i}", reason="ok", unit="case") for i in range(500)]
    check_arguments("Mutation.recordInventoryEvents", {"input": batch, "atomic": True}, {"input": "input"})
    # a refusal after a good batch is not confused by the walk before it
    with pytest.raises(Refusal) as refused:
        check_arguments("Mutation.recordInventoryEvents", {"input": [*batch, _event(source="\x00")]}, {})
    assert refused.value.field == ["input", "500", "source"]


# --- lists of flat inputs coerced in one pass (inputs.coerce_flat_list, CostLimitedExecutor.build) ---

_SCHEMA = build_schema()
_EVENTS_TYPE = _SCHEMA._schema.get_type("InventoryEventInput")


def _graphql_core(value: object) -> object:
    from graphql import GraphQLList, GraphQLNonNull, Undefined
    from graphql.utilities import coerce_input_value

    coerced = coerce_input_value(value, GraphQLNonNull(GraphQLList(GraphQLNonNull(_EVENTS_TYPE))))  # type: ignore[arg-type]
    return None if coerced is Undefined else coerced


def _fast(value: object) -> object:
    from graphql import GraphQLList, GraphQLNonNull

    from app.graphql.inputs import coerce_flat_list

    return coerce_flat_list(value, GraphQLNonNull(GraphQLList(GraphQLNonNull(_EVENTS_TYPE))))  # type: ignore[arg-type]


def _wire_event(i: int = 0) -> dict[str, object]:
    return {
        "source": "pos",
        "externalId": f"e-{i}",
        "type": "SOLD",
        "skuCode": "SKU-1",
        "locationCode": "WH-1",
        "quantity": 1 + i,
        "occurredAt": "2026-01-01T09:00:00.25Z",
    }


def test_a_plain_batch_is_coerced_as_graphql_core_does() -> None:
    batch = [_wire_event(i) for i in range(50)]
    batch[7] |= {"reason": "x", "reference": None, "expectedAt": "2026-02-01T00:00:00+02:00", "unit": "case"}
    batch[9] |= {"type": "TRANSFER_OUT", "toLocationCode": "WH-2", "quantity": -5}
    fast, slow = _fast(batch), _graphql_core(batch)
    assert fast is not None and fast == slow
    assert [type(v) for item in fast for v in item.values()] == [  # type: ignore[attr-defined]
        type(v)
        for item in slow  # type: ignore[attr-defined]
        for v in item.values()
    ]


wire_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.sampled_from(["SOLD", "sold", "COUNTED", "2026-01-01T09:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
field_names = st.sampled_from([*_wire_event(), "reason", "toLocationCode", "expectedAt", "unit", "extra"])


def _change(item: dict[str, object], name: str, value: object) -> None:
    """Set a field to `value`, or leave it out when `value` is KeyError."""
    if value is KeyError:
        item.pop(name, None)
    else:
        item[name] = value


@given(
    changes=st.lists(st.tuples(st.integers(0, 2), field_names, st.one_of(wire_values, st.just(KeyError))), max_size=4)
)
def test_any_batch_is_coerced_as_graphql_core_does_or_left_to_it(
    changes: list[tuple[int, str, object]],
) -> None:
    batch: list[object] = [_wire_event(i) for i in range(3)]
    for index, name, value in changes:
        item = batch[index]
        assert isinstance(item, dict)
        _change(item, name, value)
    fast = _fast(batch)
    if fast is not None:  # else graphql-core coerces it (and reports its errors) as before
        assert fast == _graphql_core(batch)


@pytest.mark.parametrize("batch", [[None], "not a list", [[_wire_event()]], [_wire_event() | {"quantity": 2.0}]])
def test_what_the_fast_path_is_not_sure_of_is_left_to_graphql_core(batch: object) -> None:
    assert _fast(batch) is None


def test_the_executor_gets_the_same_variables_either_way() -> None:
    from graphql import parse

    from app.graphql.limits import CostLimitedExecutor

    document = parse(
        "mutation R($input: [InventoryEventInput!]!, $atomic: Boolean!) "
        "{ recordInventoryEvents(input: $input, atomic: $atomic) { results { index } } }"
    )
    batch = [_wire_event(i) for i in range(5)]
    built = CostLimitedExecutor.build(_SCHEMA._schema, document, raw_variable_values={"input": batch, "atomic": False})
    assert not isinstance(built, list)
    assert built.variable_values.coerced == {"input": _graphql_core(batch), "atomic": False}
    assert built.variable_values.sources["input"].value is batch
    # an invalid value still gets graphql-core's own error
    refused = CostLimitedExecutor.build(
        _SCHEMA._schema, document, raw_variable_values={"input": [_wire_event() | {"type": "LOST"}], "atomic": True}
    )
    assert isinstance(refused, list)
    assert refused[0].message == (
        "Variable '$input' has invalid value at [0].type: Value 'LOST' does not exist in 'InventoryEventType' enum."
    )


# --- one flat input with a list of flat inputs (ReserveInput), coerced in one pass (coerce_flat_object) ---

_RESERVE_TYPE = _SCHEMA._schema.get_type("ReserveInput")


def _reserve_graphql_core(value: object) -> object:
    from graphql import GraphQLNonNull, Undefined
    from graphql.utilities import coerce_input_value

    coerced = coerce_input_value(value, GraphQLNonNull(_RESERVE_TYPE))  # type: ignore[arg-type]
    return None if coerced is Undefined else coerced


def _reserve_fast(value: object) -> object:
    from graphql import GraphQLNonNull

    from app.graphql.inputs import coerce_flat_object

    return coerce_flat_object(value, GraphQLNonNull(_RESERVE_TYPE))  # type: ignore[arg-type]


def _wire_reserve() -> dict[str, object]:
    return {
        "lines": [{"skuCode": "SKU-1", "quantity": 1, "locationCode": "WH-1"}, {"skuCode": "SKU-2", "quantity": 3}],
        "idempotencyKey": "k-1",
    }


def test_a_plain_reserve_input_is_coerced_as_graphql_core_does() -> None:
    for changes in (
        {},
        {"ttlSeconds": 60, "channelCode": None, "cartRef": "c", "accountCode": "A", "allowPartial": True},
        {"lines": []},
    ):
        value = _wire_reserve() | changes
        fast, slow = _reserve_fast(value), _reserve_graphql_core(value)
        assert fast is not None and fast == slow
        assert list(fast) == list(slow)  # type: ignore[call-overload]  # the same fields in the same order


reserve_field_names = st.sampled_from(
    ["lines", "idempotencyKey", "ttlSeconds", "channelCode", "cartRef", "accountCode", "allowPartial", "extra"]
)
line_field_names = st.sampled_from(["skuCode", "quantity", "locationCode", "unit", "extra"])


@given(
    changes=st.lists(st.tuples(reserve_field_names, st.one_of(wire_values, st.just(KeyError))), max_size=3),
    line_changes=st.lists(
        st.tuples(st.integers(0, 1), line_field_names, st.one_of(wire_values, st.just(KeyError))), max_size=3
    ),
)
def test_any_reserve_input_is_coerced_as_graphql_core_does_or_left_to_it(
    changes: list[tuple[str, object]], line_changes: list[tuple[int, str, object]]
) -> None:
    value = _wire_reserve()
    lines = value["lines"]
    assert isinstance(lines, list)
    for index, name, change in line_changes:
        _change(lines[index], name, change)
    for name, change in changes:
        _change(value, name, change)
    fast = _reserve_fast(value)
    if fast is not None:  # else graphql-core coerces it (and reports its errors) as before
        assert fast == _reserve_graphql_core(value)


@pytest.mark.parametrize(
    "changes",
    [
        {"lines": {"skuCode": "SKU-1", "quantity": 1}},  # one line for a list: graphql-core reads it
        {"lines": [None]},
        {"lines": "SKU-1"},
        {"allowPartial": None},
        {"allowPartial": 1},
        {"ttlSeconds": 1.0},
        {"idempotencyKey": None},
        {"extra": 1},
    ],
)
def test_what_the_object_fast_path_is_not_sure_of_is_left_to_graphql_core(changes: dict[str, object]) -> None:
    assert _reserve_fast(_wire_reserve() | changes) is None
    assert _reserve_fast([_wire_reserve()]) is None


def test_the_executor_gets_the_same_reserve_variables_either_way() -> None:
    from graphql import parse

    from app.graphql.limits import CostLimitedExecutor

    document = parse(
        "mutation R($input: ReserveInput!, $also: ReserveInput) { a: reserve(input: $input) { reservation { id } } "
        "b: reserve(input: $also) { reservation { id } } }"
    )
    value = _wire_reserve()
    for also in ({"also": None}, {}, {"also": _wire_reserve() | {"ttlSeconds": 5}}):
        built = CostLimitedExecutor.build(_SCHEMA._schema, document, raw_variable_values={"input": value, **also})
        assert not isinstance(built, list)
        general = {"input": _reserve_graphql_core(value)}
        if also:
            general["also"] = None if also["also"] is None else _reserve_graphql_core(also["also"])
        assert built.variable_values.coerced == general
        assert built.variable_values.sources["input"].value is value
        assert built.variable_values.sources["input"].signature.type.of_type is _RESERVE_TYPE  # type: ignore[union-attr]
        assert set(built.variable_values.sources) == {"input", "also"}
        # the operation executed is the document's, but for the definitions of the variables read here
        assert built.operation.selection_set is document.definitions[0].selection_set  # type: ignore[attr-defined]
    # an invalid value still gets graphql-core's own error
    refused = CostLimitedExecutor.build(
        _SCHEMA._schema, document, raw_variable_values={"input": value | {"allowPartial": "yes"}}
    )
    assert isinstance(refused, list)
    assert refused[0].message == (
        "Variable '$input' has invalid value at .allowPartial: Boolean cannot represent a non boolean value: 'yes'"
    )
