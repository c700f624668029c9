"""Websocket protocol handlers: server keepalive on graphql-transport-ws too.

Strawberry sends the legacy graphql-ws keepalive ("ka") itself, but on graphql-transport-ws it only
answers a client's ping. `PingingTransportWSHandler` also pings the client every
`view.keep_alive_interval` seconds after `connection_ack` (the protocol's own ping, which compliant
clients answer with pong), so idle subscriptions keep proxies and load balancers from timing out
and a client can tell a silent server from a dead one. Dead TCP peers are closed by uvicorn's
websocket-level ping/pong (`--ws-ping-interval`/`--ws-ping-timeout`) on both protocols.

It also sends `next` messages through `rendered_next`: a payload shared by many subscribers (see
app/graphql/fanout.py) is JSON-encoded once, not once per subscriber.

Hostile input (README, Limits): `StockwireWebSocketAdapter` refuses a text message over
`max_request_bytes` before parsing it (close 4413) and one that is not a JSON object with a string
`type` (close 4400, on both protocols: Strawberry indexed into whatever JSON came and died with
1006). Both handlers check the shape of `subscribe`/`start` before Strawberry reads it, count every
operation against the caps of app/realtime/limits.py (a refusal is the operation's `error` with
`extensions.code`), and the legacy graphql-ws handler runs a query or mutation once as
graphql-transport-ws does (Strawberry's only ran subscriptions and answered anything else with an
internal error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from json import JSONDecodeError
from typing import Any, cast

from graphql import GraphQLFormattedError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived, WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    CompleteMessage,
    ErrorMessage,
    OperationMessage,
    StartMessage,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError

from app.graphql.fanout import rendered_next
from app.realtime.lean import LeanOperation, lean_document
from app.realtime.limits import MESSAGE_TOO_LARGE, Admission, LimitExceeded, Ticket

log = logging.getLogger("stockwire.realtime")

# scope entries: what a connection holds (released when its socket ends), and a close to send instead
# of Strawberry's own (a connection refused by a cap is 4429, not Strawberry's 4403/1011)
TICKETS = "stockwire.tickets"
CLOSE_AS = "stockwire.close_as"
BAD_MESSAGE = "a message must be a JSON object with a string type"


def too_large(text: str, limit: int) -> bool:
    """Whether `text` is over `limit` bytes in UTF-8 (encoded only when its length cannot tell)."""
    if len(text) > limit:
        return True
    return len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit


class StockwireWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's ASGI adapter, refusing oversized and non-object messages before any handler sees them."""

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        limit = int(getattr(self.view, "max_request_bytes", 1_048_576))
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                text = await self.ws.receive_text()
                if too_large(text, limit):
                    # never parsed: the same cap as an HTTP body (max_request_bytes)
                    await self.close(4413, f"{MESSAGE_TOO_LARGE}: a message is at most {limit} bytes")
                    return
                try:
                    message = self.view.decode_json(text)
                except JSONDecodeError as e:
                    if ignore_parsing_errors:
                        continue
                    raise NonJsonMessageReceived from e
                if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                    await self.close(4400, BAD_MESSAGE)
                    return
                yield message
                # not held while the connection idles until its next message
                del text, message
        except KeyError as e:
            raise NonTextMessageReceived from e
        except WebSocketDisconnect:
            pass

    async def close(self, code: int, reason: str) -> None:
        override = self.ws.scope.get(CLOSE_AS)
        if override is not None:
            code, reason = override
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client left meanwhile
            await self.ws.close(code=code, reason=reason)


def _admission(view: object) -> Admission | None:
    admission = getattr(view, "admission", None)
    return admission if isinstance(admission, Admission) else None


def _admit_operation(view: object, context: object, open_now: int) -> Ticket:
    """A ticket for one more operation on this connection; raises LimitExceeded over a cap."""
    admission = _admission(view)
    if admission is None:
        return Ticket()
    request = getattr(context, "request", None)
    client = request.client if isinstance(request, WebSocket) else None
    principal = getattr(context, "principal", None)
    key_id = getattr(principal, "key_id", None)
    tenant_id = getattr(context, "tenant_id", None)
    return admission.operation(client.host if client else "unknown", key_id, open_now, tenant_id)


def _operation_shape_error(message: Mapping[str, object]) -> str | None:
    """Why a subscribe/start message cannot be run (Strawberry would index into it and crash)."""
    if not isinstance(message.get("id"), str):
        return "an operation id must be a string"
    payload = message.get("payload")
    if not isinstance(payload, dict):
        return "an operation's payload must be an object"
    if not isinstance(payload.get("query"), str):
        return "an operation's query must be a string"
    if not isinstance(payload.get("variables"), dict | None):
        return "an operation's variables must be an object"
    if not isinstance(payload.get("operationName"), str | None):
        return "an operation's operationName must be a string"
    return None


_TICK = 0.1  # seconds between two rounds of the keepalive wheel: each pings the connections of one slot


class _Keepalive:
    """One timer per process and interval pings every acknowledged connection once per interval.

    A timer per connection (its TimerHandle, bound method and context) cost about 0.8 KB for every
    idle subscriber (tracemalloc, 2,000 of them); here a connection is one dict entry. The interval
    is cut into slots of `_TICK` seconds; a connection joins the slot that comes round one interval
    after it was acknowledged, and each tick pings one slot's connections, so pings stay spread over
    the interval as connections arrived, not sent in one burst. A ping runs as a short task of its
    own (a slow socket must not hold up the others); no task, no timer, while no connection is kept
    alive.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._slots: list[dict[int, PingingTransportWSHandler]] = [{} for _ in range(max(1, round(interval / _TICK)))]
        self._at = 0  # the slot the next tick pings
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._where: dict[int, int] = {}  # id(handler) -> its slot

    def __len__(self) -> int:
        return self._count

    def add(self, handler: PingingTransportWSHandler) -> None:
        if id(handler) in self._where:
            return
        slot = (self._at - 1) % len(self._slots)  # the last to come round: about one interval from now
        self._slots[slot][id(handler)] = handler
        self._where[id(handler)] = slot
        self._count += 1
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # (another loop: a test's, since closed)
            if self._timer is not None:
                self._timer.cancel()
            self._loop = loop
            self._timer = loop.call_later(self.interval / len(self._slots), self._tick)

    def remove(self, handler: PingingTransportWSHandler) -> None:
        slot = self._where.pop(id(handler), None)
        if slot is not None:
            del self._slots[slot][id(handler)]
            self._count -= 1

    def _tick(self) -> None:
        self._timer = None
        due = self._slots[self._at]
        self._at = (self._at + 1) % len(self._slots)
        loop = asyncio.get_running_loop()
        for handler in list(due.values()):
            handler.ping_soon(loop)
        if self._count:
            self._timer = loop.call_later(self.interval / len(self._slots), self._tick)


_keepalives: dict[float, _Keepalive] = {}  # per interval (one per process in practice)


def _keepalive(interval: float) -> _Keepalive:
    keepalive = _keepalives.get(interval)
    if keepalive is None:
        keepalive = _keepalives[interval] = _Keepalive(interval)
    return keepalive


class PingingTransportWSHandler(BaseGraphQLTransportWSHandler[Any, None]):
    # No timer or task per connection: thousands of idle subscribers each holding a sleeping task or
    # a timer cost memory for nothing; `_Keepalive` pings them all, and a task exists only while a
    # ping is sent.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # every attribute set here, none later: an instance dict that grows after __init__ stops
        # sharing its keys and costs about 0.4 KB more per connection
        self._ping_task: asyncio.Task[None] | None = None
        self._kept_alive: _Keepalive | None = None
        self._stopped = False
        # lean subscriptions (app/realtime/lean.py) with something to send, and the task sending it
        # (both only while there is something to send)
        self._ready: list[LeanOperation] | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def handle(self) -> None:
        # Strawberry's loop, except that the message just handled is not kept while the connection
        # idles: a subscriber's `subscribe` message (its query text and variables, parsed: ~1 KB)
        # stayed referenced by this frame for the life of the connection
        self.on_request_accepted()
        try:
            try:
                async for message in self.websocket.iter_json():
                    await self.handle_message(cast("Message", message))
                    del message
            except NonTextMessageReceived:
                await self.handle_invalid_message("WebSocket message type must be text")
            except NonJsonMessageReceived:
                await self.handle_invalid_message("WebSocket message must be valid JSON")
        except WebSocketDisconnected:
            pass
        finally:
            await self.shutdown()

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._kept_alive is None and not self._stopped:
            self._kept_alive = _keepalive(float(getattr(self.view, "keep_alive_interval", None) or 15.0))
            self._kept_alive.add(self)
        if self.connection_acknowledged:
            # Strawberry has cancelled its init-timeout task above (its done-callback collects it) but
            # would keep the Task object for the life of the connection
            self.connection_init_timeout_task = None

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        shape = _operation_shape_error(cast("Mapping[str, object]", message))
        if shape is not None and self.connection_acknowledged:
            await self.websocket.close(code=4400, reason=shape)
            return
        if not self.connection_acknowledged or message["id"] in self.operations:
            await super().handle_subscribe(message)  # 4401 / 4409, as Strawberry answers them
            return
        try:
            ticket = _admit_operation(self.view, self.context, len(self.operations))
        except LimitExceeded as refused:
            error = {"message": str(refused), "extensions": refused.extensions()}
            await self.send_message(cast("Message", {"id": message["id"], "type": "error", "payload": [error]}))
            return
        known = lean_document(self.schema, message["payload"])
        limit = self.max_subscriptions_per_connection
        if known is not None and (limit is None or len(self.operations) < limit):
            # an idle subscriber without task or generators (app/realtime/lean.py)
            lean = LeanOperation(self, message["id"], known, message["payload"].get("variables"), ticket)
            self.operations[message["id"]] = cast("Any", lean)
            lean.start(message)
            return
        await self.subscribe_as_strawberry(message, ticket)

    async def subscribe_as_strawberry(self, message: Mapping[str, Any], ticket: Ticket) -> None:
        """Strawberry's own subscribe, holding `ticket` until its operation ends."""
        await super().handle_subscribe(cast("SubscribeMessage", message))
        operation = self.operations.get(message["id"])
        if operation is None or operation.task is None:
            ticket.release()
        else:
            operation.task.add_done_callback(ticket)

    async def cleanup_operation(self, operation_id: str) -> None:
        operation: object = self.operations.get(operation_id)
        if isinstance(operation, LeanOperation):
            del self.operations[operation_id]
            operation.stop()
            return
        await super().cleanup_operation(operation_id)

    def queue_lean(self, operation: LeanOperation) -> None:
        """`operation` has something to send: the connection's drain task sends it (one task for all
        the lean subscriptions of a connection, alive only while there is something to send)."""
        if self._stopped:
            return
        ready = self._ready
        if ready is None:
            ready = self._ready = []
        ready.append(operation)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="stockwire-lean-drain")

    async def _drain(self) -> None:
        try:
            while self._ready:
                operation = self._ready.pop(0)
                operation.queued = False
                try:
                    await operation.pump()
                except WebSocketDisconnected:
                    raise
                except Exception:
                    # one subscription's fault must not hold back the others queued on this connection
                    log.exception("sending to a lean subscription failed")
        except WebSocketDisconnected:
            pass  # the handler's own loop notices and shuts down
        finally:
            for operation in self._ready or ():
                operation.queued = False
            self._ready = None
            if self._drainer is asyncio.current_task():
                self._drainer = None

    async def send_message(self, message: Message) -> None:
        socket = getattr(self.websocket, "ws", None)  # Strawberry's Starlette adapter wraps the socket
        text = rendered_next(dict(message), self.view.encode_json) if socket is not None else None
        if socket is None or text is None:
            await super().send_message(message)
            return
        try:
            await socket.send_text(text)
        except WebSocketDisconnect as exc:  # what the adapter's send_json raises, for the handler's loop
            raise WebSocketDisconnected from exc

    async def shutdown(self) -> None:
        self._stopped = True
        kept, self._kept_alive = self._kept_alive, None
        if kept is not None:
            kept.remove(self)
        task, self._ping_task = self._ping_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().shutdown()  # stops every operation, lean ones included (cleanup_operation)
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drainer

    def ping_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the protocol's ping (called by `_Keepalive`; one in flight at most)."""
        if not self._stopped and self._ping_task is None:
            self._ping_task = loop.create_task(self._ping(), name="stockwire-ws-ping")

    async def _ping(self) -> None:
        try:
            await self.send_message({"type": "ping"})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away; the handler's own loop notices and shuts down
            log.debug("keepalive ping stopped: %s", exc)
        finally:
            self._ping_task = None


class StockwireGraphQLWSHandler(BaseGraphQLWSHandler[Any, None]):
    """The legacy graphql-ws protocol with the same shapes, caps and operations as graphql-transport-ws."""

    async def handle_message(self, message: OperationMessage) -> None:
        if message["type"] == "start":
            shape = _operation_shape_error(cast("Mapping[str, object]", message))
            if shape is not None:
                await self.websocket.close(code=4400, reason=shape)
                return
        await super().handle_message(message)

    async def handle_start(self, message: StartMessage) -> None:
        operation_id = message["id"]
        if not self.connection_acknowledged:
            await super().handle_start(message)  # 4401
            return
        if operation_id in self.tasks:
            await self.cleanup_operation(operation_id)  # a reused id replaces its operation (Strawberry's rule)
        try:
            ticket = _admit_operation(self.view, self.context, len(self.tasks))
        except LimitExceeded as refused:
            payload = cast("GraphQLFormattedError", {"message": str(refused), "extensions": refused.extensions()})
            await self.send_message(ErrorMessage(type="error", id=operation_id, payload=payload))
            return
        await super().handle_start(message)
        task = self.tasks.get(operation_id)
        if task is None:
            ticket.release()
        else:
            task.add_done_callback(ticket)

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        # Strawberry's, with `stream` instead of `subscribe`: a query or mutation runs once and completes
        try:
            result_source = await self.schema.stream(
                query=query,
                variable_values=variables,
                operation_name=operation_name,
                context_value=self.context,
                root_value=self.root_value,
            )
            if not isinstance(result_source, AsyncGenerator):
                raise TypeError("an operation's results must be a stream")
            self.subscriptions[operation_id] = result_source
            first = True
            async for result in result_source:
                if first and isinstance(result, PreExecutionError):
                    assert result.errors
                    await self.send_message(
                        ErrorMessage(type="error", id=operation_id, payload=result.errors[0].formatted)
                    )
                    return
                if not isinstance(result, ExecutionResult):  # @defer/@stream: this schema enables neither
                    raise TypeError("incremental delivery is not supported over graphql-ws")
                await self.send_data_message(result, operation_id)
                first = False
            await self.send_message(CompleteMessage(type="complete", id=operation_id))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.send_message(CompleteMessage(type="complete", id=operation_id))
        except WebSocketDisconnected:
            pass
        finally:
            self.subscriptions.pop(operation_id, None)
            self.tasks.pop(operation_id, None)
