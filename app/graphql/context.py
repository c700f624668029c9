from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.services.context import Ctx


@dataclass
class Context:
    """Per request (or per websocket connection): the services' context and the transport's request."""

    ctx: Ctx
    request: Any = None
    response: Any = None
    realtime: Any = None  # app.realtime.streams.Streams, when the process runs the realtime layer
    # the security layer (app/security): who is calling, and the per-process limiter and key cache
    principal: Any = None  # app.security.auth.Principal; set at the edge (HTTP) or at connection_init (ws)
    # the tenant every operation of this request or connection acts for (app/security/tenants.py);
    # None: none, and the database then shows nothing
    tenant_id: int | None = None
    security: Any = None  # app.security.runtime.Security
    request_id: str | None = None  # in X-Request-Id and in masked errors, so a log line can be found
    connection_params: Any = None  # the websocket connection_init payload (Strawberry sets it)
    operation: str | None = None  # "query", "mutation" or "subscription", once execution starts
