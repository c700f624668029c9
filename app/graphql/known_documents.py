"""Known documents: a repeated request runs on graphql-core directly (issue 15, target 1).

A client sends the same few documents over and over (a checkout sends one `reserve` mutation with new
variables each time). Strawberry's `Schema.execute` still builds an execution context, a fresh
instance of every schema extension, an extensions runner and its parsing, validation, operation and
execution hooks, and a middleware manager for each of them, and asks the parser and validation caches:
per request, about as much CPU as executing the mutation itself (profiled).

A document that once parsed and validated cleanly, with one operation to run, is remembered here by
(query text, operationName) (`RememberDocuments`, the schema's first extension, so it sees the final
verdict of every other one). The next request with the same text and name skips all of that and is
executed by `execute_known` with the schema's own executor class (the cost limit and the flat inputs of
app/graphql/limits.py), its own resolvers and field extensions (scope check, input guard, hold rate
limit), and then does by hand exactly what the schema extensions would have done after parsing and
validation:

* Observe: the key id bound for every log line, the operation's metrics (app/observability/extension.py);
* process_errors: faults logged once with the request id and traceback;
* ClientErrors: faults masked with the request id, every other error given its code.

Nothing about a request's variables is cached: they are coerced (and refused) on every execution. What is
cached is only what depends on the text alone: the parsed document, that it validated with no error,
its operation and its root fields. Documents that fail to parse or validate are never remembered (their
errors come from Strawberry's path, as before), nor is an operation of a type the request may not run
(GET may only query; subscriptions are websockets' only): those go Strawberry's way and are refused there.
tests/test_known_documents.py sends one history both ways and compares the answers byte for byte.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, execute
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.execution import optimized_is_awaitable
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from app.compat import graphql_core_schema, provided_operation_name
from app.observability.extension import operation_label, record_execution, root_fields_of

if TYPE_CHECKING:
    from app.graphql.errors import StockwireSchema


@dataclass(frozen=True, slots=True)
class KnownDocument:
    """What one validated document text says, whatever the variables."""

    document: DocumentNode
    operation_type: OperationType
    # the operation's name as Strawberry passes it to graphql-core (the one named, or the only one's)
    operation_name: str | None
    root_fields: tuple[tuple[str, str], ...]  # (field name, response key), for the metrics
    label: str  # the metrics' operation label
    operation: OperationDefinitionNode  # the operation it runs (`_the_operation`)


Key = tuple[str, str | None]


class KnownDocuments:
    """An LRU of (query text, operationName) -> KnownDocument, one per built schema."""

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self.entries: OrderedDict[Key, KnownDocument] = OrderedDict()
        self.enabled = True  # off: every request goes Strawberry's way (the tests' A/B)

    def get(self, query: str, operation_name: str | None) -> KnownDocument | None:
        key = (query, operation_name)
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def remember(self, query: str, operation_name: str | None, document: DocumentNode) -> None:
        operation = _the_operation(document, operation_name)
        if operation is None:
            return  # ambiguous or unknown name: Strawberry's path refuses it every time
        fields = root_fields_of(operation)
        self.entries[(query, operation_name)] = KnownDocument(
            document,
            OperationType(operation.operation.value),
            operation.name.value if operation.name is not None else None,
            fields,
            operation_label(fields),
            operation,
        )
        if len(self.entries) > self.maxsize:
            self.entries.popitem(last=False)


def _the_operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    """The operation a request runs: the one named, or the only one (several without a name: none)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name is not None and o.name.value == name), None)


class RememberDocuments(SchemaExtension):
    """Remembers a document that parsed and validated with no error (listed first among the schema's
    extensions: its validation hook closes last, after every other one has had its say)."""

    def __init__(self, known: KnownDocuments) -> None:
        self.known = known

    def on_validate(self) -> Iterator[None]:
        yield
        ec = self.execution_context
        if ec.pre_execution_errors or ec.graphql_document is None or not isinstance(ec.query, str):
            return
        self.known.remember(ec.query, provided_operation_name(ec), ec.graphql_document)


async def execute_known(
    schema: StockwireSchema,
    known: KnownDocument,
    query: str,
    variables: dict[str, Any] | None,
    context: Any,
    root_value: Any,
    operation_name: str | None,
    allowed: Iterable[OperationType],
    operation_extensions: dict[str, Any] | None,
) -> ExecutionResult:
    """What `schema.execute` answers for a known document, without its per-request machinery."""
    principal = getattr(context, "principal", None)
    if principal is not None:
        # Observe.on_operation: every line logged while this operation runs names the key
        structlog.contextvars.bind_contextvars(key_id=principal.key_id)
    start = time.perf_counter()
    try:
        outcome = execute(
            graphql_core_schema(schema),
            known.document,
            root_value=root_value,
            variable_values=variables,
            operation_name=known.operation_name,
            context_value=context,
            executor_class=schema.execution_context_class,
            is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # a bool, as Strawberry passes it
            operation_extensions=operation_extensions,
        )
        # a mutation's is always awaitable; a query of plain fields may be answered at once
        executed = outcome if isinstance(outcome, GraphQLExecutionResult) else await outcome
    except Exception as exc:  # as Strawberry's execute: an error escaping execution is the operation's error
        error = exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
        result = ExecutionResult(data=None, errors=[error], extensions={})
        _report(schema, result, context, query, variables, operation_name, allowed, operation_extensions)
        return result
    result = ExecutionResult(data=executed.data, errors=executed.errors, extensions={})
    record_execution(known.label, known.operation_type.value, known.root_fields, result, time.perf_counter() - start)
    if result.errors:
        _report(schema, result, context, query, variables, operation_name, allowed, operation_extensions)
    return result


def _report(
    schema: StockwireSchema,
    result: ExecutionResult,
    context: Any,
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    allowed: Iterable[OperationType],
    operation_extensions: dict[str, Any] | None,
) -> None:
    """Errors as Strawberry's path leaves them: logged (faults with their traceback), then masked or coded."""
    assert result.errors is not None
    ec = ExecutionContext(
        query=query,
        schema=schema,
        allowed_operations=allowed,
        context=context,
        variables=variables,
        provided_operation_name=operation_name,
        operation_extensions=operation_extensions,
    )
    schema.process_errors(result.errors, ec)
    policy = schema.error_policy
    result.errors = [policy.for_client(e, context) for e in result.errors]
