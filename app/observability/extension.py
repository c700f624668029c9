"""A Strawberry extension: per-operation metrics (by root field) and the key id in every log line."""

from __future__ import annotations

import time
from collections.abc import Iterator

import structlog
from graphql import FieldNode, OperationDefinitionNode
from strawberry.extensions import SchemaExtension

from app.observability.metrics import OPERATION_SECONDS, OPERATIONS, record_operation_result

_MAX_NAMES = 3  # a label value built from root fields stays one of a bounded few


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
            OPERATIONS.labels(self._operation(), op, "started").inc()
            return
        name = self._operation()
        outcome = "error" if ec.result is not None and ec.result.errors else "ok"
        OPERATIONS.labels(name, op, outcome).inc()
        OPERATION_SECONDS.labels(name, op).observe(time.perf_counter() - start)
        if op == "mutation" and ec.result is not None:
            record_operation_result(self._root_fields(), ec.result.data)

    def _root_fields(self) -> list[tuple[str, str]]:
        """(field name, response key) of the executed operation's top-level fields."""
        document = self.execution_context.graphql_document
        if document is None:
            return []
        wanted = self.execution_context.operation_name
        for definition in document.definitions:
            if isinstance(definition, OperationDefinitionNode) and (
                wanted is None or (definition.name is not None and definition.name.value == wanted)
            ):
                return [
                    (s.name.value, (s.alias or s.name).value)
                    for s in definition.selection_set.selections
                    if isinstance(s, FieldNode) and not s.name.value.startswith("__")
                ]
        return []

    def _operation(self) -> str:
        names = sorted({name for name, _ in self._root_fields()})
        if not names:
            return "introspection"
        return ",".join(names[:_MAX_NAMES]) + (",…" if len(names) > _MAX_NAMES else "")
