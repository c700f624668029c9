"""Per request: a request id and key id bound for every log line, an access line, HTTP metrics.

An ASGI middleware rather than code in the GraphQL view, so /readyz, /metrics and everything else
are covered too. The request id is settled here (the caller's X-Request-Id when it is safe, or a new
one) and written back into the request headers, so the GraphQL view, which takes the caller's id
when present, answers with the same id this middleware logs.
"""

from __future__ import annotations

import logging
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.graphql.request_state import _REQUEST_ID, new_request_id
from app.observability.logging import access_line
from app.observability.metrics import HTTP_REQUESTS, HTTP_SECONDS, child

_QUIET = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: counted, logged at DEBUG only


def _observe(route: str, method: str, status: int, elapsed: float) -> None:
    # the labelled series kept (metrics.child): bounded, as the method is the client's
    child(HTTP_REQUESTS, route, method, str(status)).inc()
    child(HTTP_SECONDS, route).observe(elapsed)


def _route(path: str) -> str:
    # label values must stay few: known paths, everything else is "other"
    if path in ("/graphql", "/healthz", "/readyz", "/metrics", "/") or path.startswith("/ops"):
        return "/ops" if path.startswith("/ops") else path
    return "other"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"x-request-id"]
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else new_request_id()
        scope["headers"] = [*headers, (b"x-request-id", rid.encode())]
        scope.setdefault("state", {})["request_id"] = rid  # the websocket's id, too (request_id_of)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        start = time.perf_counter()
        status = 500 if scope["type"] == "http" else 101

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.close":
                status = 101
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            path = scope.get("path", "")
            route = _route(path)
            method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
            if scope["type"] == "http":
                _observe(route, method, status, elapsed)
            principal = scope.get("state", {}).get("principal")
            key_id = getattr(principal, "key_id", None)
            if key_id is not None:
                structlog.contextvars.bind_contextvars(key_id=key_id)
            access_line(
                logging.DEBUG if path in _QUIET else logging.INFO, method, path, status, round(elapsed * 1000, 2)
            )
            structlog.contextvars.clear_contextvars()
