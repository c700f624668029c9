"""Plain objects completed in one loop (app/graphql/plain_fields.py) answer exactly what graphql-core's
own path answers: the same data, and the same errors where a value does not complete."""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest
import strawberry
from graphql import GraphQLObjectType, parse
from graphql.execution import ExecutionResult, Executor, execute

from app.graphql import plain_fields
from app.graphql.plain_fields import PlainFieldsExecutor, complete_plainly, plan_of


@strawberry.enum
class Mood(Enum):
    CALM = "calm"
    BUSY = "busy"


@strawberry.type
class Row:
    index: int
    mood: Mood
    note: str | None = None
    count: int = 0

    @strawberry.field
    def doubled(self) -> int:
        return self.count * 2


@strawberry.type
class Query:
    @strawberry.field
    def rows(self) -> list[Row]:
        return [Row(index=i, mood=Mood.BUSY if i % 2 else Mood.CALM, note=None if i % 3 else f"n{i}") for i in range(7)]

    @strawberry.field
    def maybe(self) -> list[Row | None] | None:
        return [Row(index=0, mood=Mood.CALM), None, Row(index=2, mood=Mood.BUSY, note="x")]

    @strawberry.field
    def broken(self) -> list[Row]:
        row = Row(index=1, mood=Mood.CALM)
        row.index = None  # type: ignore[assignment]  # a null where the schema promises an Int
        return [Row(index=0, mood=Mood.BUSY), row]

    @strawberry.field
    def odd(self) -> list[Row]:
        row = Row(index=1, mood=Mood.CALM)
        row.mood = "not a mood"  # type: ignore[assignment]  # does not coerce
        return [row]


SCHEMA = strawberry.Schema(query=Query)


def _both(query: str, variables: dict[str, Any] | None = None) -> tuple[ExecutionResult, ExecutionResult]:
    schema = SCHEMA._schema
    document = parse(query)
    slow = execute(schema, document, variable_values=variables, executor_class=Executor)
    fast = execute(schema, document, variable_values=variables, executor_class=PlainFieldsExecutor)
    assert isinstance(slow, ExecutionResult) and isinstance(fast, ExecutionResult)
    return slow, fast


def _errors(result: ExecutionResult) -> list[tuple[str, list[str | int] | None]]:
    return [(e.message, e.path) for e in result.errors or []]


def test_plain_objects_answer_what_graphql_core_answers() -> None:
    slow, fast = _both(
        "query($skip: Boolean!) { rows { __typename i: index mood note count index "
        "... on Row { n: note } hidden: count @skip(if: $skip) } }",
        {"skip": True},
    )
    assert fast.data == slow.data
    assert fast.errors is None and slow.errors is None
    assert fast.data is not None
    assert slow.data is not None and list(fast.data["rows"][3]) == list(slow.data["rows"][3])  # the keys' order
    assert fast.data["rows"][3] == {
        "__typename": "Row",
        "i": 3,
        "mood": "BUSY",
        "note": "n3",
        "count": 0,
        "index": 3,
        "n": "n3",
    }


def test_a_nullable_list_with_null_items_answers_what_graphql_core_answers() -> None:
    slow, fast = _both("{ maybe { index note __typename } }")
    assert (
        fast.data
        == slow.data
        == {
            "maybe": [
                {"index": 0, "note": None, "__typename": "Row"},
                None,
                {"index": 2, "note": "x", "__typename": "Row"},
            ]
        }
    )
    assert fast.errors is None and slow.errors is None


def test_a_selection_with_a_resolver_takes_graphql_cores_path_and_answers_the_same() -> None:
    slow, fast = _both("{ rows { index doubled } }")
    assert fast.data == slow.data and fast.errors == slow.errors
    row = SCHEMA._schema.type_map["Row"]
    assert isinstance(row, GraphQLObjectType)
    plain = {"index": [_details(row, "index")], "mood": [_details(row, "mood")]}
    assert plan_of(row, plain) is not None
    assert plan_of(row, {**plain, "doubled": [_details(row, "doubled")]}) is None


def test_a_null_for_a_non_null_field_is_reported_as_graphql_core_reports_it() -> None:
    slow, fast = _both("{ broken { index mood } }")
    assert fast.data == slow.data is None
    assert _errors(fast) == _errors(slow)
    assert _errors(fast)[0][1] == ["broken", 1, "index"]


def test_a_value_that_does_not_coerce_is_reported_as_graphql_core_reports_it() -> None:
    slow, fast = _both("{ odd { index mood } }")
    assert fast.data == slow.data
    assert _errors(fast) == _errors(slow) and _errors(fast)


def test_the_loop_is_what_answers_plain_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    answered: list[dict[str, Any] | None] = []

    def counted(*args: Any) -> dict[str, Any] | None:
        done = complete_plainly(*args)
        answered.append(done)
        return done

    monkeypatch.setattr(plain_fields, "complete_plainly", counted)
    result = execute(
        SCHEMA._schema, parse("{ rows { index mood } broken { index } }"), executor_class=PlainFieldsExecutor
    )
    assert isinstance(result, ExecutionResult)
    # the seven rows in the loop; in the broken list the second row does not complete plainly, so the
    # list takes graphql-core's path, whose objects try the loop again: the first completes, the
    # second falls back to graphql-core's fields (which report the error)
    assert [a is not None for a in answered] == [True] * 7 + [True, False] + [True, False]
    assert _errors(result) == [("Cannot return null for non-nullable field Row.index.", ["broken", 1, "index"])]
    assert answered[3] == {"index": 3, "mood": "BUSY"}


def _details(parent: GraphQLObjectType, name: str) -> Any:
    from graphql.execution.collect_fields import FieldDetails
    from graphql.language import FieldNode, NameNode

    return FieldDetails(FieldNode(name=NameNode(value=name), arguments=(), directives=()), None)
