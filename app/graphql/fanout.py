"""Render a subscription event once per process, however many subscribers receive it.

graphql-core executes a subscription's selection set again for every event of every subscriber,
and the websocket handler JSON-encodes every result again. With 1,000 subscribers of one SKU, one
change was executed and encoded 1,000 times (about 0.45 ms each on our machines). Both results
depend only on what is shared:

* the event object: streams hand every subscriber the same decoded view, and `shared_root` turns
  it into the same GraphQL object (so object identity can key the cache);
* the operation: Strawberry's ParserCache returns the same document for the same query text;
* variables, but only where the selection set below the subscription field uses them (the root
  field's own arguments, like skuCodes, were consumed when the stream was created);

and not on the subscriber's context: no field under Availability or StockLevel reads `info.context`
(permissions are checked when the subscription starts). `SharedEventExecutor` keeps the last
results by those keys; `rendered_next` keeps the JSON of the last results. Results with errors are
never shared. Both caches are bounded and keyed by identity, holding the keyed objects alive so an
id cannot be reused while its entry exists.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    print_ast,
)
from graphql.execution import Executor
from strawberry.execution import optimized_is_awaitable

from app.compat import build_strawberry_resolve_info
from app.graphql.plain_fields import PlainFieldsExecutor

K = TypeVar("K")
V = TypeVar("V")

# Entries are useful only while one change is being handed to its subscribers (milliseconds), and
# each holds its objects alive: small caches, or idle subscribers' initial states would stay cached.
_RESULTS = 1024  # executed events kept (per process)
_TEXTS = 1024  # encoded `next` payloads kept
_ROOTS = 1024  # GraphQL objects made from shared views


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)  # no move_to_end: entries die young anyway (the next change replaces them)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)


# --- the event object -----------------------------------------------------------------------------

_roots: _Lru[int, tuple[object, object]] = _Lru(_ROOTS)


def shared_root(view: V, make: Callable[[V], K]) -> K:
    """`make(view)`, made once per view object (streams share one view among their subscribers).

    One `make` per view type (Availability.of, StockLevel.of), so the view alone is the key."""
    hit = _roots.get(id(view))
    if hit is not None and hit[0] is view:
        return hit[1]  # type: ignore[return-value]
    made = make(view)
    _roots.put(id(view), (view, made))
    return made


# --- execution ------------------------------------------------------------------------------------

_results: _Lru[tuple[int, ...] | tuple[Any, ...], tuple[object, object, ExecutionResult]] = _Lru(_RESULTS)
_variable_use: _Lru[int, tuple[OperationDefinitionNode, bool]] = _Lru(1024)


def uses_variables_below_root(operation: OperationDefinitionNode, fragments: dict[str, Any]) -> bool:
    """Whether an event's result can depend on variables (conservative: any `$` in the printed parts)."""
    hit = _variable_use.get(id(operation))
    if hit is not None and hit[0] is operation:
        return hit[1]
    parts = []
    for selection in operation.selection_set.selections:
        below = getattr(selection, "selection_set", None)
        parts.append(print_ast(below) if below is not None else "")
        parts += [print_ast(d) for d in getattr(selection, "directives", None) or ()]
        if not isinstance(selection, FieldNode):  # a fragment at the root: look at all of it
            parts.append(print_ast(selection))
    parts += [print_ast(f) for f in fragments.values()]
    uses = any("$" in p for p in parts)
    _variable_use.put(id(operation), (operation, uses))
    return uses


class _Rendered:
    """Stands in for a per-event executor whose result is already known (no copy of the executor)."""

    __slots__ = ("result",)

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result

    def execute_operation(self, serially: bool | None = None) -> ExecutionResult:
        return self.result


class SharedEventExecutor(PlainFieldsExecutor):
    """Strawberry's executor, with each subscription event's result shared by equal subscriptions.

    graphql-core's public executor API (`Executor`, `build`, `build_per_event_executor`,
    `execute_operation`, given to Strawberry as its public `execution_context_class`), on its plain
    Executor (completing plain objects in one loop: app/graphql/plain_fields.py), not the
    IncrementalExecutor Strawberry's own class extends:
    this schema does not enable @defer/@stream, and the incremental executor's per-operation plan
    maps cost about 1.6 KB for every open subscription (tracemalloc, 2,000 idle subscribers).
    Strawberry's two additions are kept: `operation_extensions` and its resolve info.
    """

    build_resolve_info = build_strawberry_resolve_info

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        operation_extensions = kwargs.pop("operation_extensions", None)
        super().__init__(*args, **kwargs)
        self.operation_extensions = operation_extensions

    def build_per_event_executor(self, payload: Any) -> Any:
        # graphql-core copies the executor for every event of every subscriber, then runs it with
        # execute_operation(False) (execute_subscription_event); a known result needs neither
        hit = _results.get(self._event_key(payload))
        if hit is not None and hit[0] is self.operation and hit[1] is payload:
            return _Rendered(hit[2])
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> Any:
        if serially is not False or self.operation.operation is not OperationType.SUBSCRIPTION:
            return super().execute_operation(serially)
        result = super().execute_operation(serially)
        if isinstance(result, ExecutionResult) and not result.errors:
            _results.put(self._event_key(self.root_value), (self.operation, self.root_value, result))
        return result

    def _event_key(self, root: object) -> tuple[Any, ...]:
        operation = self.operation
        variables: object = None
        if uses_variables_below_root(operation, self.fragment_definitions):
            variables = repr(sorted(self.variable_values.coerced.items()))
        return (id(self.schema), id(operation), id(root), variables)


async def event_result(
    schema: GraphQLSchema,
    executor_class: type[Executor],  # type: ignore[type-arg]
    document: DocumentNode,
    operation: OperationDefinitionNode,
    root: object,
    context: object,
    variables: dict[str, Any] | None,
) -> ExecutionResult:
    """One subscription event's result, as graphql-core's subscription runs it, for `operation` (of
    `document`) whose selection set below its root field reads no variable (app/realtime/lean.py): the
    result another subscriber's execution left in the cache, else executed (and cached) once."""
    hit = _results.get((id(schema), id(operation), id(root), None))
    if hit is not None and hit[0] is operation and hit[1] is root:
        return hit[2]
    built = executor_class.build(
        schema,
        document,
        context_value=context,
        raw_variable_values=variables,
        operation_name=operation.name.value if operation.name is not None else None,
        is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # a bool, as Strawberry passes it
    )
    if not isinstance(built, Executor):
        return ExecutionResult(None, errors=built)
    try:
        result: Any = built.build_per_event_executor(root).execute_operation(False)
        if built.is_awaitable(result):
            result = await result
    finally:
        free_executor(built)
    assert isinstance(result, ExecutionResult)  # a subscription event: no incremental delivery
    return result


def free_executor(executor: Executor) -> None:  # type: ignore[type-arg]
    """Break an executor's reference cycle once it is done with (its `async_helpers` hold its own bound
    methods), so it is freed at once: otherwise every lean subscriber's executors (app/realtime/lean.py)
    wait as garbage for the next full collection, about 2 KB each (tracemalloc, 2,000 idle subscribers)."""
    with contextlib.suppress(AttributeError):
        del executor.async_helpers


# --- encoding -------------------------------------------------------------------------------------

_texts: _Lru[int, tuple[object, str]] = _Lru(_TEXTS)


def rendered_next(message: dict[str, Any], encode: Callable[[object], str | bytes]) -> str | None:
    """The `next` message as JSON text, its payload encoded once per result; None if not shareable."""
    payload = message.get("payload")
    if message.get("type") != "next" or not isinstance(payload, dict) or payload.keys() != {"data"}:
        return None
    data = payload["data"]
    hit = _texts.get(id(data))
    if hit is not None and hit[0] is data:
        body = hit[1]
    else:
        encoded = encode(data)
        body = encoded.decode() if isinstance(encoded, bytes) else encoded
        _texts.put(id(data), (data, body))
    return f'{{"id":{json.dumps(message["id"])},"type":"next","payload":{{"data":{body}}}}}'
