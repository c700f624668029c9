"""A websocket's key and tenant (from the connection_init payload, or the handshake's headers) and
the watch that closes it once its key is revoked. Used by the view in app/graphql/http_view.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketState

from app.graphql.context import Context
from app.security.auth import bearer_token
from app.security.runtime import Security
from app.security.tenants import HEADER as TENANT_HEADER
from app.security.tenants import PAYLOAD_FIELD as TENANT_FIELD

log = logging.getLogger("stockwire.http")


def _ws_token(context: Context) -> str | None:
    params = context.connection_params
    if isinstance(params, dict):
        for name, value in params.items():
            if isinstance(name, str) and name.lower() == "authorization" and isinstance(value, str):
                return bearer_token(value)
    request = context.request
    if isinstance(request, WebSocket):  # a server-side client may authenticate the handshake instead
        return bearer_token(request.headers.get("authorization"))
    return None


def _ws_tenant(context: Context) -> str | None:
    """The tenant a websocket names: `tenant` in connection_init's payload, or the handshake's header."""
    params = context.connection_params
    if isinstance(params, dict):
        value = params.get(TENANT_FIELD)
        if isinstance(value, str):
            return value
    request = context.request
    if isinstance(request, WebSocket):
        return request.headers.get(TENANT_HEADER)
    return None


async def _close_when_revoked(websocket: WebSocket, security: Security, token: str) -> None:
    interval = max(1.0, security.settings.auth_cache_seconds)
    while websocket.application_state == WebSocketState.CONNECTED:
        await asyncio.sleep(interval)
        try:
            still = await security.authenticator.authenticate(token)
        except Exception:
            log.warning("could not re-check a websocket's API key; keeping the connection", exc_info=True)
            continue
        if still is None:
            with contextlib.suppress(Exception):
                await websocket.close(code=4403, reason="API key revoked")
            return
