"""One subscription event is executed and encoded once per process, however many subscribers get it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from strawberry.extensions import ParserCache

from app.graphql.fanout import SharedEventExecutor, rendered_next, shared_root

RESOLVED: list[str] = []


@strawberry.type
class Thing:
    code: str

    @strawberry.field
    def shown(self, prefix: str = "") -> str:
        RESOLVED.append(self.code)  # counts executions of the selection set
        if self.code == "boom":
            raise ValueError("cannot show boom")
        return prefix + self.code


EVENTS: asyncio.Queue[Thing] | None = None


@strawberry.type
class Query:
    ping: int = 1


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def things(self, codes: list[str] | None = None) -> AsyncGenerator[Thing, None]:
        del codes  # consumed when the stream starts, like skuCodes
        assert EVENTS is not None
        while True:
            yield await EVENTS.get()


# ParserCache, as in the app's schema: equal query texts give the same document, which keys the cache
schema = strawberry.Schema(
    query=Query,
    subscription=Subscription,
    execution_context_class=SharedEventExecutor,
    extensions=[lambda: ParserCache()],
)


async def _results(query: str, variables: dict[str, Any], events: list[Thing]) -> list[Any]:
    """Each event through its own subscription, as each subscriber's stream would deliver it."""
    global EVENTS
    out = []
    for event in events:
        EVENTS = asyncio.Queue()
        EVENTS.put_nowait(event)
        stream = await schema.subscribe(query, variable_values=variables)
        assert not isinstance(stream, strawberry.types.ExecutionResult)
        result = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        out.append(result)
    return out


async def test_subscribers_of_one_event_share_one_execution() -> None:
    RESOLVED.clear()
    shared = Thing(code="A-1")
    query = "subscription($c: [String!]) { things(codes: $c) { code shown } }"
    # three subscribers with different root arguments, one event object
    results = await _results(query, {"c": ["A-1"]}, [shared]) + await _results(query, {"c": ["A-1", "B"]}, [shared])
    results += await _results(query, {"c": None}, [shared])
    assert [r.data for r in results] == [{"things": {"code": "A-1", "shown": "A-1"}}] * 3
    assert RESOLVED == ["A-1"]  # executed once, not three times
    assert results[0].data is results[2].data

    # a different event object (even with equal content) is executed again
    await _results(query, {"c": ["A-1"]}, [Thing(code="A-1")])
    assert RESOLVED == ["A-1", "A-1"]


async def test_variables_used_below_the_root_field_keep_results_apart() -> None:
    RESOLVED.clear()
    shared = Thing(code="X")
    query = "subscription($p: String!) { things { shown(prefix: $p) } }"
    a = await _results(query, {"p": "a:"}, [shared])
    b = await _results(query, {"p": "b:"}, [shared])
    again = await _results(query, {"p": "a:"}, [shared])
    assert [r.data["things"]["shown"] for r in a + b + again] == ["a:X", "b:X", "a:X"]
    assert RESOLVED == ["X", "X"]  # the third reused the first


async def test_results_with_errors_are_not_shared() -> None:
    RESOLVED.clear()
    bad = Thing(code="boom")
    query = "subscription { things { shown } }"
    results = await _results(query, {}, [bad]) + await _results(query, {}, [bad])
    assert all(r.errors for r in results)
    assert RESOLVED == ["boom", "boom"]


def test_shared_root_makes_one_object_per_view() -> None:
    made: list[object] = []

    def make(v: object) -> object:
        made.append(v)
        return object()

    view, other = object(), object()
    assert shared_root(view, make) is shared_root(view, make)
    assert shared_root(other, make) is not shared_root(view, make)
    assert made == [view, other]


def test_next_messages_encode_a_shared_payload_once() -> None:
    encoded: list[object] = []

    def encode(value: object) -> str:
        encoded.append(value)
        return json.dumps(value)

    data = {"availabilityChanged": {"skuCode": "S-1", "available": 3}}
    texts = [rendered_next({"id": op, "type": "next", "payload": {"data": data}}, encode) for op in ("1", 'q"2')]
    assert [json.loads(t) for t in texts if t] == [
        {"id": "1", "type": "next", "payload": {"data": data}},
        {"id": 'q"2', "type": "next", "payload": {"data": data}},
    ]
    assert encoded == [data]
    # errors or extensions, and other message types, take the ordinary path
    assert rendered_next({"id": "1", "type": "next", "payload": {"data": None, "errors": []}}, encode) is None
    assert rendered_next({"id": "1", "type": "complete"}, encode) is None
