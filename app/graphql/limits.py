"""Limits of one request as a whole: its size in bytes (both transports), what it may make resolvers
read (its cost), and the size of its answer.

The cost is counted before anything runs, from the operation and its variables, in rows a resolver
will read: a list field counts the items it will return (the codes it was given, or its page size;
codes count as sent, duplicates too: they are dropped before reading, but asking for one code a
thousand times is asking for a thousand), times everything selected below it; a list whose length
the request does not fix (an SKU's locations, a payload's results) counts as `query_cost_list_size`
(and one inside such a list as 1).
So `availability(skuCodes: <1,000 codes>) { locations { ... } }` costs 1,000 x (1 + 20) = 21,000,
and twenty aliases of it 420,000. Over `max_query_cost`, the request is refused at once with
QUERY_TOO_COSTLY, its limit and its cost, before any resolver runs.

A refusal still costs reading, parsing and counting the whole request, so a client sending it in a
loop would keep the (single-threaded) server busy and everyone else's requests queued behind it. Over
HTTP, a request refused as too costly within `cost_penalty_window_seconds` of an earlier one from the
same API key or the same client address is answered only after `cost_penalty_seconds` (its error says
so in `extensions.penaltySeconds`): the first refusal is answered at once, a looping client gets one
answer per penalty, and waiting costs nothing. Requests within the limit are never delayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLType,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValueNode,
    VariableNode,
    get_named_type,
)
from graphql.execution.values import VariableValueSource

from app.graphql.fanout import SharedEventExecutor
from app.graphql.inputs import coerce_flat_variables
from app.settings import Settings

QUERY_TOO_COSTLY = "QUERY_TOO_COSTLY"
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
_ABSENT = object()
DEFAULT_PAGE = 100  # the page size of a field with `first` when none is given (app/graphql/queries.py)


# --- bytes ------------------------------------------------------------------------------------------


def max_request_bytes(settings: Settings) -> int:
    """The most bytes one request may have: an HTTP body, or one websocket message (the same limit)."""
    return settings.max_request_bytes


def request_too_large_message(settings: Settings) -> str:
    return f"the request is over {max_request_bytes(settings)} bytes"


# --- cost -------------------------------------------------------------------------------------------


def _is_list(type_: GraphQLType) -> bool:
    if isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    return isinstance(type_, GraphQLList)


class _Coster:
    """Cost of selection sets per unit of their parent; fragments are costed once per parent type,
    so a document spreading fragments into each other cannot make the count itself expensive."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        defaults: Mapping[str, ValueNode | None],
        list_size: int,
    ) -> None:
        self.schema, self.fragments, self.variables, self.list_size = schema, fragments, variables, list_size
        self.defaults = defaults
        self.memo: dict[tuple[str, str, int], int] = {}
        # whether the count read a variable: if not, it is the document's alone (`cost_of` keeps it)
        self.read_variables = False

    def selection_set(self, selections: SelectionSetNode, parent: GraphQLType, page: int) -> int:
        total = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, page)
            elif isinstance(selection, InlineFragmentNode):
                on = self.schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
                total += self.selection_set(selection.selection_set, on or parent, page)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value, page)
        return total

    def fragment(self, name: str, page: int) -> int:
        definition = self.fragments.get(name)
        if definition is None:
            return 0
        key = (name, definition.type_condition.name.value, page)
        if key not in self.memo:
            self.memo[key] = 0  # a cycle (validation refuses them) counts nothing
            on = self.schema.get_type(definition.type_condition.name.value)
            self.memo[key] = self.selection_set(definition.selection_set, on, page) if on else 0
        return self.memo[key]

    def field(self, node: FieldNode, parent: GraphQLType, page: int) -> int:
        if node.selection_set is None or node.name.value.startswith("__"):
            return 0  # a scalar is read with its row; introspection has limits of its own
        if not isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
            return 0
        definition = parent.fields.get(node.name.value)
        if definition is None:
            return 0
        size, child_page = self.size(definition, node, page)
        below = self.selection_set(node.selection_set, get_named_type(definition.type), child_page)
        return size * (1 + below)

    def argument(self, node: FieldNode, name: str) -> Any:
        """An argument's value as sent (the raw variable, or a literal's items): counted before the
        variables are coerced, so a refusal costs no coercion of a thousand codes."""
        for argument in node.arguments or ():
            if argument.name.value != name:
                continue
            value: Any = argument.value
            if isinstance(value, VariableNode):
                self.read_variables = True
                given = self.variables.get(value.name.value, _ABSENT)
                value = self.defaults.get(value.name.value) if given is _ABSENT else given
                if not isinstance(value, ValueNode):
                    return value
            if isinstance(value, ListValueNode):
                return list(value.values)
            if isinstance(value, IntValueNode):
                return int(value.value)
            return None if isinstance(value, (NullValueNode, type(None))) else value
        return None

    def size(self, definition: GraphQLField, node: FieldNode, page: int) -> tuple[int, int]:
        """(items this field returns, the size of unsized lists right below it)."""
        is_list = _is_list(definition.type)
        if not definition.args:
            # a list of unknown length counts `page` items; lists of unknown length inside it count
            # one each (so a payload's nested lists do not compound 20 x 20 x 20): the answer cap
            # bounds what this leaves out
            return (page, 1) if is_list else (1, page)
        # arguments are read only where they change the count (a page's `first`, a list's lengths),
        # so a document whose count reads no variable is costed once (`cost_of`)
        if "first" in definition.args:  # a page: it returns the page, or holds it in a connection
            first = self.argument(node, "first")
            wanted = first if isinstance(first, int) and first > 0 else DEFAULT_PAGE
            return (wanted, self.list_size) if is_list else (1, wanted)
        if not is_list:
            return 1, page
        arguments = [self.argument(node, name) for name in definition.args]
        lengths = [len(v) for v in arguments if isinstance(v, list)]
        return (max(lengths) if lengths else page), self.list_size


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name is not None and o.name.value == name), None)


def _costed(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any] | None,
    list_size: int,
) -> tuple[int, bool]:
    """(the rows `operation` would make resolvers read with `variables` as sent, whether that read any
    variable)."""
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0, False
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    defaults = {v.variable.name.value: v.default_value for v in operation.variable_definitions or ()}
    coster = _Coster(schema, fragments, variables or {}, defaults, list_size)
    return coster.selection_set(operation.selection_set, root, list_size), coster.read_variables


def query_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any] | None,
    list_size: int,
) -> int:
    """The rows `operation` would make resolvers read, with `variables` as sent."""
    return _costed(schema, document, operation, variables, list_size)[0]


_FIXED_COSTS_MAX = 1024
# (schema, document, operation) by identity -> (the three, for the identity check, and the cost): the
# cost of an operation whose count read no variable (a checkout's `reserve(input: $input)`: one
# payload whatever the lines). The parser cache and app/graphql/known_documents.py hand every repeat
# of a text the same DocumentNode, so a repeated request is costed once, not walked each time (3.4%
# of a SPREAD reserve's server samples). Held strongly, at most _FIXED_COSTS_MAX of them.
_fixed_costs: dict[tuple[int, int, int, int], tuple[GraphQLSchema, DocumentNode, OperationDefinitionNode, int]] = {}


def cost_of(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any] | None,
    list_size: int,
) -> int:
    """`query_cost`, remembered for a document whose cost does not depend on its variables."""
    key = (id(schema), id(document), id(operation), list_size)
    found = _fixed_costs.get(key)
    if found is not None and found[0] is schema and found[1] is document and found[2] is operation:
        return found[3]
    cost, read_variables = _costed(schema, document, operation, variables, list_size)
    if not read_variables:
        if len(_fixed_costs) >= _FIXED_COSTS_MAX:
            del _fixed_costs[next(iter(_fixed_costs))]  # the oldest
        _fixed_costs[key] = (schema, document, operation, cost)
    return cost


_VARIANTS_MAX = 1024
# (document, operation, variable names) -> the document with that operation's definitions of those
# variables left out, for graphql-core to coerce the rest: the parser cache and known documents hand
# every repeat of a text the same nodes, so a repeated request makes its variant once. Held strongly
# (the identity check), at most _VARIANTS_MAX of them.
_variants: dict[tuple[int, int, frozenset[str]], tuple[DocumentNode, DocumentNode]] = {}


def _without_variables(
    document: DocumentNode, operation: OperationDefinitionNode, names: frozenset[str]
) -> DocumentNode:
    """`document` with `operation` not defining the variables `names` (its selections the same nodes)."""
    key = (id(document), id(operation), names)
    found = _variants.get(key)
    if found is not None and found[0] is document:
        return found[1]
    kept = tuple(d for d in operation.variable_definitions or () if d.variable.name.value not in names)
    lean = replace(operation, variable_definitions=kept)
    variant = replace(document, definitions=tuple(lean if d is operation else d for d in document.definitions))
    if len(_variants) >= _VARIANTS_MAX:
        del _variants[next(iter(_variants))]  # the oldest
    _variants[key] = (document, variant)
    return variant


def too_costly(cost: int, limit: int, penalty: float = 0.0) -> GraphQLError:
    extensions: dict[str, Any] = {"code": QUERY_TOO_COSTLY, "limit": limit, "cost": cost}
    message = (
        f"this request would read about {cost} rows; at most {limit} per request "
        "(ask for fewer codes, aliases or nested lists, or split the request)"
    )
    if penalty > 0:
        extensions["penaltySeconds"] = penalty
        message += f"; answered after {penalty:g} s, as a repeat of a refused request"
    return GraphQLError(message, extensions=extensions)


def refusal_penalty(context: Any) -> float:
    """Notes a too-costly refusal for the caller's key and address; the seconds its answer waits.

    HTTP only: a websocket's refusals are answered in its own stream (the HTTP view does the wait)."""
    security = getattr(context, "security", None)
    request = getattr(context, "request", None)
    scope = getattr(request, "scope", None)
    if security is None or not isinstance(scope, dict) or scope.get("type") != "http":
        return 0.0
    principal = getattr(context, "principal", None)
    client = scope.get("client")
    penalty: float = security.costly.refused(getattr(principal, "key_id", None), client[0] if client else None)
    return penalty


async def wait_penalty(errors: list[GraphQLError] | None) -> None:
    """Waits the penalty a repeated too-costly refusal earned (refusal_penalty) before it is answered."""
    for error in errors or ():
        delay = (error.extensions or {}).get("penaltySeconds")
        if isinstance(delay, (int, float)) and delay > 0:
            await asyncio.sleep(delay)
            return


class CostLimitedExecutor(SharedEventExecutor):
    """The schema's executor, refusing a query or mutation over the cost limit before it runs.

    Subscriptions are left out: their root field's codes are bounded per subscription (websocket
    limits), and each event is executed once per process whatever the number of subscribers."""

    max_cost: int = 0
    list_size: int = 20

    @classmethod
    def build(
        cls,
        schema: GraphQLSchema,
        document: DocumentNode,
        root_value: Any = None,
        context_value: Any = None,
        raw_variable_values: dict[str, Any] | None = None,
        operation_name: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        # before the variables are coerced (a thousand codes cost more to coerce than to count)
        operation = _operation(document, operation_name)
        if cls.max_cost and operation is not None and operation.operation is not OperationType.SUBSCRIPTION:
            cost = cost_of(schema, document, operation, raw_variable_values, cls.list_size)
            if cost > cls.max_cost:
                return [too_costly(cost, cls.max_cost, refusal_penalty(context_value))]
        # flat inputs (a reserve's ReserveInput) and lists of them (recordInventoryEvents' 500 events)
        # coerced in one pass (app/graphql/inputs.py); graphql-core coerces the other variables, of the
        # same operation without the definitions of these
        given = raw_variable_values or {}
        flat: dict[str, tuple[Any, Any]] = {}
        if operation is not None and operation.operation is not OperationType.SUBSCRIPTION:
            flat, raw_variable_values = coerce_flat_variables(schema, operation, raw_variable_values)
            if flat:
                document = _without_variables(document, operation, frozenset(flat))
        built = super().build(
            schema, document, root_value, context_value, raw_variable_values, operation_name, *args, **kwargs
        )
        if flat and not isinstance(built, list):
            for name, (signature, coerced) in flat.items():
                built.variable_values.coerced[name] = coerced
                built.variable_values.sources[name] = VariableValueSource(signature, given[name])
        return built

    def execute_operation(self, serially: bool | None = None) -> Any:
        kind = self.operation.operation
        if serially is None and kind is not OperationType.SUBSCRIPTION and hasattr(self.context_value, "operation"):
            self.context_value.operation = kind.value  # the HTTP view caps a query's answer
        return super().execute_operation(serially)


@cache
def executor_for(max_cost: int, list_size: int) -> type[CostLimitedExecutor]:
    """One executor class per limit (built once: the class is the schema's, shared by every request)."""
    return type("CostLimitedExecutor", (CostLimitedExecutor,), {"max_cost": max_cost, "list_size": list_size})
