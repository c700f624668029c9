"""What the HTTP edge records on a request (or a websocket) for everything after it: the request id,
the caller's key (principal) and the tenant it acts for."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from starlette.requests import Request
from starlette.websockets import WebSocket

from app.security.auth import Principal

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id")
    # a caller's id is kept (to follow a call across services) when it cannot smuggle anything into logs
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def principal_of(request: Request | WebSocket) -> Principal | None:
    return getattr(request.state, "principal", None)


def tenant_of(request: Request | WebSocket) -> int | None:
    """The tenant the request acts for (HTTP: resolved at the edge; websockets: at connection_init)."""
    tenant_id = getattr(request.state, "tenant_id", None)
    return tenant_id if isinstance(tenant_id, int) else None


def request_id_of(request: Request | WebSocket) -> str:
    rid = getattr(request.state, "request_id", None)
    if not isinstance(rid, str):
        rid = uuid.uuid4().hex  # a websocket: one id per connection
        request.state.request_id = rid
    return rid
