"""A Strawberry extension: per-operation metrics (by root field) and the key id in every log line.

The metric helpers below are plain functions of the operation, so that a known document's execution
(app/graphql/known_documents.py, which runs no schema extension) records exactly the same."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
from graphql import FieldNode, OperationDefinitionNode
from strawberry.extensions import SchemaExtension

from app.observability.metrics import OPERATION_SECONDS, OPERATIONS, child, record_operation_result

_MAX_NAMES = 3  # a label value built from root fields stays one of a bounded few


def root_fields_of(operation: OperationDefinitionNode) -> tuple[tuple[str, str], ...]:
    """(field name, response key) of the operation's top-level fields (introspection left out)."""
    return tuple(
        (s.name.value, (s.alias or s.name).value)
        for s in operation.selection_set.selections
        if isinstance(s, FieldNode) and not s.name.value.startswith("__")
    )


def operation_label(root_fields: Sequence[tuple[str, str]]) -> str:
    """The metrics' operation label: its root fields' names, a bounded few."""
    names = sorted({name for name, _ in root_fields})
    if not names:
        return "introspection"
    return ",".join(names[:_MAX_NAMES]) + (",…" if len(names) > _MAX_NAMES else "")


def record_execution(label: str, op: str, root_fields: Sequence[tuple[str, str]], result: Any, seconds: float) -> None:
    """The metrics of one executed query or mutation (`result`: its ExecutionResult, or None)."""
    outcome = "error" if result is not None and result.errors else "ok"
    child(OPERATIONS, label, op, outcome).inc()
    child(OPERATION_SECONDS, label, op).observe(seconds)
    if op == "mutation" and result is not None:
        record_operation_result(root_fields, result.data)


class Observe(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        principal = getattr(self.execution_context.context, "principal", None)
        if principal is not None:
            # a contextvar, so every line logged while this operation runs names the key
            structlog.contextvars.bind_contextvars(key_id=principal.key_id)
        yield

    def on_execute(self) -> Iterator[None]:
        ec = self.execution_context
        start = time.perf_counter()
        yield
        op = ec.operation_type.value if ec.graphql_document is not None else "unknown"
        if op == "subscription":
            # this hook stays open for the subscription's lifetime: its duration means nothing
            OPERATIONS.labels(operation_label(self._root_fields()), op, "started").inc()
            return
        fields = self._root_fields()
        record_execution(operation_label(fields), op, fields, ec.result, time.perf_counter() - start)

    def _root_fields(self) -> tuple[tuple[str, str], ...]:
        """(field name, response key) of the executed operation's top-level fields."""
        document = self.execution_context.graphql_document
        if document is None:
            return ()
        wanted = self.execution_context.operation_name
        for definition in document.definitions:
            if isinstance(definition, OperationDefinitionNode) and (
                wanted is None or (definition.name is not None and definition.name.value == wanted)
            ):
                return root_fields_of(definition)
        return ()
