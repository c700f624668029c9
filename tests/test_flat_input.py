"""Inputs of scalars and enums are built straight from graphql-core's coerced values, like Strawberry would."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

import pytest
import strawberry

from app.graphql.inputs import InventoryEventInput, flat_input


@strawberry.enum
class Colour(Enum):
    RED = "red"
    BLUE = "blue"


@flat_input
@strawberry.input
class Thing:
    code: str
    colour: Colour
    at: datetime
    count_of_things: int
    note: str | None = None
    weight: float | None = 1.5


SEEN: list[Thing] = []


@strawberry.type
class Query:
    @strawberry.field
    def take(self, things: list[Thing]) -> int:
        SEEN.extend(things)
        return len(things)


schema = strawberry.Schema(query=Query)


async def test_a_flat_input_gets_the_values_strawberry_would_give() -> None:
    SEEN.clear()
    result = await schema.execute(
        """{ take(things: [
             {code: "A", colour: RED, at: "2026-11-23T10:00:00Z", countOfThings: 2},
             {code: "B", colour: BLUE, at: "2026-11-23T11:00:00+01:00", countOfThings: 0, note: "n", weight: null}
           ]) }"""
    )
    assert result.errors is None
    assert [
        Thing(code="A", colour=Colour.RED, at=datetime(2026, 11, 23, 10, tzinfo=UTC), count_of_things=2),
        Thing(
            code="B",
            colour=Colour.BLUE,
            at=datetime(2026, 11, 23, 10, tzinfo=UTC),
            count_of_things=0,
            note="n",
            weight=None,
        ),
    ] == SEEN
    assert SEEN[0].note is None and SEEN[0].weight == 1.5  # omitted: the Python defaults
    assert isinstance(SEEN[1].colour, Colour)


def test_an_input_with_a_nested_input_is_refused() -> None:
    @strawberry.input
    class Outer:
        inner: InventoryEventInput

    with pytest.raises(TypeError, match=r"Outer\.inner is not a scalar, an enum or a list of flat inputs"):
        flat_input(Outer)

    @strawberry.input
    class Plain:
        code: str

    @strawberry.input
    class Many:
        plain: list[Plain]

    with pytest.raises(TypeError, match=r"Many\.plain is not a scalar, an enum or a list of flat inputs"):
        flat_input(Many)  # its items are not flat inputs themselves


@strawberry.input
class Basket:
    ref: str
    things: list[Thing]
    maybe: list[Thing] | None = None
    note: str | None = None


@flat_input
@strawberry.input
class FlatBasket:
    ref: str
    things: list[Thing]
    maybe: list[Thing] | None = None
    note: str | None = None


@strawberry.type
class BasketQuery:
    @strawberry.field
    def general(self, basket: Basket) -> str:
        return repr((basket.ref, basket.things, basket.maybe, basket.note))

    @strawberry.field
    def flat(self, basket: FlatBasket) -> str:
        assert all(isinstance(t, Thing) for t in basket.things)
        return repr((basket.ref, basket.things, basket.maybe, basket.note))


async def test_a_list_of_flat_inputs_is_built_as_strawberry_builds_it() -> None:
    baskets = [
        '{ref: "r", things: [{code: "A", colour: RED, at: "2026-11-23T10:00:00Z", countOfThings: 2}]}',
        '{ref: "r", things: [], maybe: null, note: "x"}',
        '{ref: "r", things: [{code: "B", colour: BLUE, at: "2026-11-23T10:00:00Z", countOfThings: 1, weight: null}], '
        'maybe: [{code: "C", colour: RED, at: "2026-11-23T10:00:00Z", countOfThings: 3, note: "n"}]}',
    ]
    basket_schema = strawberry.Schema(query=BasketQuery)
    for basket in baskets:
        result = await basket_schema.execute(f"{{ general(basket: {basket}) flat(basket: {basket}) }}")
        assert result.errors is None
        assert result.data is not None and result.data["general"] == result.data["flat"]
