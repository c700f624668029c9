"""A websocket's key and tenant (from the connection_init payload, or the handshake's headers) and
the watch (one per process) that closes it once its key is revoked. Used by the view in app/graphql/http_view.py."""

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


class RevocationWatch:
    """Closes websockets whose API key was revoked: one task per process for every open socket.

    A task per socket (each with its coroutine frame, sleeping) cost about 2 KB for every idle
    subscriber; here a socket is one dict entry. Every `auth_cache_seconds` (at least 1 s) the
    watcher re-checks each distinct key once (the authenticator's cache answers most) and closes the
    sockets of a key that no longer authenticates with 4403, so a revoked key's socket closes
    within that interval, as before. The task exists only while some socket is watched.
    """

    def __init__(self) -> None:
        # id(websocket) -> (websocket, security, token): starlette's WebSocket is not hashable
        self._sockets: dict[int, tuple[WebSocket, Security, str]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sockets)

    def watch(self, websocket: WebSocket, security: Security, token: str) -> None:
        self._sockets[id(websocket)] = (websocket, security, token)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stockwire-key-watch")

    def forget(self, websocket: WebSocket) -> None:
        held = self._sockets.get(id(websocket))
        if held is not None and held[0] is websocket:
            del self._sockets[id(websocket)]

    async def _run(self) -> None:
        while self._sockets:
            interval = min(max(1.0, s.settings.auth_cache_seconds) for _, s, _ in self._sockets.values())
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # pragma: no cover - check() logs its own failures
                log.exception("websocket key watch failed; it goes on")
        self._task = None

    async def check(self) -> None:
        """Re-check every watched socket's key once; close (4403) the sockets of a revoked one."""
        by_key: dict[tuple[int, str], list[WebSocket]] = {}
        securities: dict[tuple[int, str], Security] = {}
        for key, (websocket, security, token) in list(self._sockets.items()):
            if websocket.application_state != WebSocketState.CONNECTED:
                self._sockets.pop(key, None)
                continue
            slot = (id(security), token)
            by_key.setdefault(slot, []).append(websocket)
            securities[slot] = security
        slots = list(by_key)
        answers = await asyncio.gather(
            *(securities[slot].authenticator.authenticate(slot[1]) for slot in slots), return_exceptions=True
        )
        closing = []
        for slot, still in zip(slots, answers, strict=True):
            if isinstance(still, BaseException):
                log.warning("could not re-check a websocket's API key; keeping its connections", exc_info=still)
                continue
            if still is None:
                for websocket in by_key[slot]:
                    self.forget(websocket)
                    closing.append(_close_revoked(websocket))
        if closing:
            await asyncio.gather(*closing)


async def _close_revoked(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code=4403, reason="API key revoked")
