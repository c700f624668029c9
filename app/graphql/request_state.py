"""What the HTTP edge records on a request (or a websocket) for everything after it: the request id,
the caller's key (principal) and the tenant it acts for."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping

from starlette.requests import Request
from starlette.websockets import WebSocket

from app.security.auth import Principal

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# A request id is 32 hex digits: this process's random 64-bit prefix and a counter from a random start.
# uuid4() (16 bytes from os.urandom, a system call) was about a tenth of an empty request's CPU;
# these need only be unique, not unpredictable (they are in every answer and log line, never a secret).
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(int.from_bytes(os.urandom(7)))


def _reseed() -> None:
    global _PREFIX, _COUNTER
    _PREFIX = os.urandom(8).hex()  # a forked worker must not repeat its parent's ids
    _COUNTER = itertools.count(int.from_bytes(os.urandom(7)))


os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def _request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id")
    # a caller's id is kept (to follow a call across services) when it cannot smuggle anything into logs
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def principal_of(request: Request | WebSocket) -> Principal | None:
    return getattr(request.state, "principal", None)


def tenant_of(request: Request | WebSocket) -> int | None:
    """The tenant the request acts for (HTTP: resolved at the edge; websockets: at connection_init)."""
    tenant_id = getattr(request.state, "tenant_id", None)
    return tenant_id if isinstance(tenant_id, int) else None


def request_id_of(request: Request | WebSocket) -> str:
    rid = getattr(request.state, "request_id", None)
    if not isinstance(rid, str):
        rid = new_request_id()  # a websocket: one id per connection
        request.state.request_id = rid
    return rid
