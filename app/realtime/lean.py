"""The lean subscription path: an idle availability or stock-level subscriber without task or generators.

Strawberry runs every graphql-transport-ws subscription as a task of its own around a chain of about
ten async generators (its stream, the extensions' `on_operation` hooks with their AsyncExitStack,
graphql-core's response iterator, app/graphql's wrappers, the stream of app/realtime/streams.py),
each also in the event loop's weak set of async generators, plus graphql-core's execution context:
about half of what an idle subscriber cost (tracemalloc, 2,000 idle subscribers; bench/README.md).

A `subscribe` message whose document is known (app/graphql/known_documents.py: it parsed and validated
before, under the same text and operationName) and is one `availabilityChanged` or `stockLevelChanged`
field, with nothing below it reading variables, runs here instead:

* its root field is resolved by graphql-core as Strawberry would (the scope check, the B2B account
  scope, the argument checks: every field extension), with `streams.LEAN` set, so the resolver hands
  back the subscriber's `Watch` instead of a stream around it;
* anything else (an error, a B2B account's stream, a failed first read) gives the watch back and runs
  the message on Strawberry's path from the start, so every error is answered exactly as there;
* the snapshot is read and sent by a short task; then the subscriber holds no task: the hub's offer
  to its mailbox queues it on its connection, whose one drain task (alive only while there is
  something to send) renders each change once per process (app/graphql/fanout.py: the same executor
  cache and JSON text Strawberry's path uses) and sends it through the handler's `send_message`;
* a resync (the broadcast reconnected) re-reads the snapshot in a short task, as `_stream` does;
* `complete` from the client, or the connection's end, stops it at once and releases its ticket.

The rules on what a subscriber is sent (the snapshot first, versions strictly increasing, content
changed) are `streams.Watch`'s, the same object Strawberry's path iterates through `_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
)
from graphql.execution import Executor, create_source_event_stream
from strawberry.execution import optimized_is_awaitable
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from app.compat import graphql_core_schema
from app.graphql.fanout import event_result, free_executor, uses_variables_below_root
from app.graphql.known_documents import KnownDocument
from app.observability.metrics import OPERATIONS
from app.realtime.limits import Ticket
from app.realtime.mailbox import MailboxClosed, ResyncNeeded
from app.realtime.streams import LEAN, Watch

if TYPE_CHECKING:
    from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message

log = logging.getLogger("stockwire.realtime")

LEAN_FIELDS = frozenset({"availabilityChanged", "stockLevelChanged"})
ENABLED = True  # False: every subscription takes Strawberry's path (the tests compare both)


class Handler(Protocol):
    """What a lean operation needs of its connection's handler (app/realtime/ws.py)."""

    schema: Any
    context: Any
    root_value: Any
    operations: dict[str, Any]

    async def send_message(self, message: Message) -> None: ...

    def queue_lean(self, operation: LeanOperation) -> None: ...

    async def subscribe_as_strawberry(self, message: Mapping[str, Any], ticket: Ticket) -> None: ...


def lean_document(schema: object, payload: Mapping[str, Any]) -> KnownDocument | None:
    """The known document of a subscribe message's payload, if this path can run it."""
    documents = getattr(schema, "known_documents", None)
    if not ENABLED or documents is None or not documents.enabled:
        return None
    name = payload.get("operationName")
    known: KnownDocument | None = documents.get(payload["query"], name)
    if known is None or known.operation_type is not OperationType.SUBSCRIPTION:
        return None
    operation = known.operation
    if operation.directives:
        return None
    selections = operation.selection_set.selections
    if len(selections) != 1:
        return None
    field = selections[0]
    if not isinstance(field, FieldNode) or field.name.value not in LEAN_FIELDS or field.directives:
        return None
    if any(argument.name.value == "accountCode" for argument in field.arguments or ()):
        return None  # a B2B account's figure: its own stream (app/graphql/b2b.py), Strawberry's path
    fragments = {d.name.value: d for d in known.document.definitions if isinstance(d, FragmentDefinitionNode)}
    if uses_variables_below_root(operation, fragments):
        return None  # an event's rendering would depend on this subscriber's variables
    return known


class LeanOperation:
    """One subscription on the lean path (in its handler's `operations`, like Strawberry's Operation)."""

    # no __dict__: one per idle subscriber
    __slots__ = ("handler", "id", "known", "live", "queued", "stopped", "task", "ticket", "variables", "watch")

    def __init__(
        self,
        handler: Handler,
        operation_id: str,
        known: KnownDocument,
        variables: dict[str, Any] | None,
        ticket: Ticket,
    ) -> None:
        self.handler = handler
        self.id = operation_id
        self.known = known
        self.variables = variables  # needed again only to render an event no other subscriber rendered
        self.ticket = ticket
        self.watch: Watch[Any, Any] | None = None
        # a task only while the snapshot is read (at the start, after a resync); Strawberry's shutdown
        # awaits `task` of every operation
        self.task: asyncio.Task[None] | None = None
        self.live = False  # the snapshot is sent: changes may be sent
        self.queued = False  # in the connection's drain queue
        self.stopped = False

    def start(self, message: Mapping[str, Any]) -> None:
        self.task = asyncio.get_running_loop().create_task(self._begin(message), name="stockwire-lean-subscribe")

    def __call__(self) -> None:
        """The mailbox's wake-up: queue this subscription on its connection (no task of its own)."""
        if self.live and not self.queued and not self.stopped:
            self.queued = True
            self.handler.queue_lean(self)

    def stop(self) -> None:
        """`complete` from the client or the end of the connection: nothing more is sent."""
        if self.stopped:
            return
        self.stopped = True
        watch, self.watch = self.watch, None
        if watch is not None:
            if watch.mailbox is not None:
                watch.mailbox.on_wake = None
            watch.close()
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.ticket.release()

    async def _begin(self, message: Mapping[str, Any]) -> None:
        try:
            watch = await self._resolve()
            views: list[Any] | None = None
            if watch is not None:
                self.watch = watch
                try:
                    views = await watch.start()
                except Exception:
                    views = None  # Strawberry's path reads again and answers the error as it does
            if views is None or self.stopped:
                if not self.stopped:
                    await self._as_strawberry(message)
                return
            del message
            assert watch is not None and watch.mailbox is not None
            watch.mailbox.on_wake = self
            for view in views:
                await self._send_view(view)
        except WebSocketDisconnected:
            return  # the handler's loop ends and stops every operation
        finally:
            if self.task is asyncio.current_task():
                self.task = None
        self._go_live()

    async def _resolve(self) -> Watch[Any, Any] | None:
        """The subscription's root field, resolved as Strawberry's path does: its Watch, or None."""
        handler, known = self.handler, self.known
        context = handler.context
        principal = getattr(context, "principal", None)
        if principal is not None:  # Observe.on_operation: log lines name the key
            structlog.contextvars.bind_contextvars(key_id=principal.key_id)
        built = handler.schema.execution_context_class.build(
            graphql_core_schema(handler.schema),
            known.document,
            root_value=handler.root_value,
            context_value=context,
            raw_variable_values=self.variables,
            operation_name=known.operation_name,
            is_awaitable=optimized_is_awaitable,
            operation_extensions=None,
        )
        if not isinstance(built, Executor):
            return None  # variables refused
        token = LEAN.set(True)
        try:
            source: Any = create_source_event_stream(built)
            if built.is_awaitable(source):
                source = await source
        finally:
            LEAN.reset(token)
            free_executor(built)
        if isinstance(source, Watch):
            OPERATIONS.labels(known.label, "subscription", "started").inc()  # Observe.on_execute
            return source
        aclose = getattr(source, "aclose", None)  # another stream (a B2B account's): not this path's
        if aclose is not None:
            await aclose()
        return None

    async def _as_strawberry(self, message: Mapping[str, Any]) -> None:
        """Run the message on Strawberry's path instead (this operation gives its id and ticket over)."""
        self.stopped = True
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.close()
        handler = self.handler
        if handler.operations.get(self.id) is self:
            del handler.operations[self.id]
        ticket, self.ticket = self.ticket, Ticket()
        await handler.subscribe_as_strawberry(message, ticket)

    def _go_live(self) -> None:
        if self.stopped:
            return
        self.live = True
        watch = self.watch
        mailbox = watch.mailbox if watch is not None else None
        if mailbox is not None and (len(mailbox) or mailbox.resync_requested or mailbox.closed):
            self()  # changes that came while the snapshot was read (no drain task for nothing)

    async def pump(self) -> None:
        """Send what the mailbox holds (called by the connection's drain task)."""
        while not self.stopped:
            watch = self.watch
            assert watch is not None and watch.mailbox is not None
            try:
                taken = watch.mailbox.take()
            except ResyncNeeded:
                self.live = False
                self.task = asyncio.get_running_loop().create_task(self._resync(), name="stockwire-lean-resync")
                return
            except MailboxClosed:
                await self._complete()  # the hub stopped: Strawberry's path completes the stream
                return
            if taken is None:
                return
            view = watch.accept(*taken)
            if view is not None:
                await self._send_view(view)

    async def _resync(self) -> None:
        try:
            watch = self.watch
            if watch is None:
                return
            try:
                views = await watch.resync()
            except Exception as exc:  # as Strawberry's path: the error as a result, then complete
                await self._send_error(exc)
                await self._complete()
                return
            for view in views:
                await self._send_view(view)
        except WebSocketDisconnected:
            return
        finally:
            if self.task is asyncio.current_task():
                self.task = None
        self._go_live()

    async def _send_view(self, view: object) -> None:
        watch, handler = self.watch, self.handler
        if watch is None or self.stopped:
            return
        schema = handler.schema
        result = await event_result(
            graphql_core_schema(schema),
            schema.execution_context_class,
            self.known.document,
            self.known.operation,
            watch.wrap(view),
            handler.context,
            self.variables,
        )
        if result.errors:
            await self._send_result(None if result.data is None else result.data, list(result.errors))
            return
        await handler.send_message({"id": self.id, "type": "next", "payload": {"data": result.data}})

    async def _send_error(self, exc: Exception) -> None:
        error = exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
        await self._send_result(None, [error])

    async def _send_result(self, data: Any, errors: list[GraphQLError]) -> None:
        """A result with errors, logged and masked as Strawberry's path does (process_errors, then
        StockwireSchema._finish)."""
        handler = self.handler
        schema, context = handler.schema, handler.context
        ec = ExecutionContext(
            query=None, schema=schema, allowed_operations=(OperationType.SUBSCRIPTION,), context=context
        )
        schema.process_errors(errors, ec)
        policy = schema.error_policy
        formatted = [policy.for_client(e, context).formatted for e in errors]
        await handler.send_message({"id": self.id, "type": "next", "payload": {"data": data, "errors": formatted}})

    async def _complete(self) -> None:
        handler = self.handler
        if handler.operations.get(self.id) is self:
            del handler.operations[self.id]  # de-registered before the message, as Strawberry's
        self.stop()
        with contextlib.suppress(WebSocketDisconnected):
            await handler.send_message({"id": self.id, "type": "complete"})
