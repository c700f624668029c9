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

    with pytest.raises(TypeError, match=r"Outer\.inner is not a scalar or an enum"):
        flat_input(Outer)
