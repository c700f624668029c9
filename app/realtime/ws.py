"""Websocket protocol handlers: server keepalive on graphql-transport-ws too.

Strawberry sends the legacy graphql-ws keepalive ("ka") itself, but on graphql-transport-ws it only
answers a client's ping. `PingingTransportWSHandler` also pings the client every
`view.keep_alive_interval` seconds after `connection_ack` (the protocol's own ping, which compliant
clients answer with pong), so idle subscriptions keep proxies and load balancers from timing out
and a client can tell a silent server from a dead one. Dead TCP peers are closed by uvicorn's
websocket-level ping/pong (`--ws-ping-interval`/`--ws-ping-timeout`) on both protocols.

It also sends `next` messages through `rendered_next`: a payload shared by many subscribers (see
app/graphql/fanout.py) is JSON-encoded once, not once per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage, Message

from app.graphql.fanout import rendered_next

log = logging.getLogger("stockwire.realtime")


class PingingTransportWSHandler(BaseGraphQLTransportWSHandler[Any, None]):
    # A timer, not a task per connection: thousands of idle subscribers each holding a sleeping task
    # (and its coroutine frame) cost memory for nothing; a task exists only while a ping is sent.
    _ping_timer: asyncio.TimerHandle | None = None
    _ping_task: asyncio.Task[None] | None = None
    _stopped = False

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._ping_timer is None:
            self._schedule_ping()
        if self.connection_acknowledged:
            # Strawberry has cancelled its init-timeout task above (its done-callback collects it) but
            # would keep the Task object for the life of the connection
            self.connection_init_timeout_task = None

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
        timer, self._ping_timer = self._ping_timer, None
        if timer is not None:
            timer.cancel()
        task, self._ping_task = self._ping_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().shutdown()

    def _schedule_ping(self) -> None:
        if self._stopped:
            return
        interval = float(getattr(self.view, "keep_alive_interval", None) or 15.0)
        self._ping_timer = asyncio.get_running_loop().call_later(interval, self._ping_due)

    def _ping_due(self) -> None:
        self._ping_timer = None
        if not self._stopped:
            self._ping_task = asyncio.get_running_loop().create_task(self._ping(), name="stockwire-ws-ping")

    async def _ping(self) -> None:
        try:
            await self.send_message({"type": "ping"})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away; the handler's own loop notices and shuts down
            log.debug("keepalive ping stopped: %s", exc)
            return
        finally:
            self._ping_task = None
        self._schedule_ping()
