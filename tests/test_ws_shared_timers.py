"""The per-process helpers that replaced a task or timer per websocket (issue 15, memory per idle
subscriber): the revocation watch and the keepalive wheel. The live behaviour (a revoked key's socket
closed with 4403, pings on an idle connection) is tested against a server in test_security_ws.py and
test_subscriptions.py; here, in process, what one of them does for many sockets at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from starlette.websockets import WebSocket, WebSocketState

from app.graphql.ws_auth import RevocationWatch
from app.realtime import ws
from app.security.runtime import Security


class FakeSocket:
    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.closed_with: int | None = None

    async def close(self, code: int, reason: str = "") -> None:
        self.closed_with = code
        self.application_state = WebSocketState.DISCONNECTED


class FakeAuthenticator:
    def __init__(self, valid: set[str]) -> None:
        self.valid = valid
        self.asked: list[str] = []

    async def authenticate(self, token: str) -> object | None:
        self.asked.append(token)
        if token == "broken":
            raise RuntimeError("the database is away")
        return object() if token in self.valid else None


def _security(authenticator: FakeAuthenticator) -> Security:
    return cast(Security, SimpleNamespace(authenticator=authenticator, settings=SimpleNamespace(auth_cache_seconds=1)))


async def test_one_watch_checks_each_key_once_and_closes_only_the_revoked_keys_sockets() -> None:
    authenticator = FakeAuthenticator({"good"})
    security = _security(authenticator)
    watch = RevocationWatch()
    sockets = {token: [FakeSocket() for _ in range(50)] for token in ("good", "revoked", "broken")}
    for token, group in sockets.items():
        for socket in group:
            watch.watch(cast(WebSocket, socket), security, token)
    gone = sockets["good"][0]
    gone.application_state = WebSocketState.DISCONNECTED  # left without telling: dropped at the next check
    assert len(watch) == 150

    await watch.check()

    assert sorted(authenticator.asked) == ["broken", "good", "revoked"]  # once per key, not per socket
    assert all(s.closed_with == 4403 for s in sockets["revoked"])
    assert all(s.closed_with is None for s in sockets["good"] + sockets["broken"])  # a failed check keeps them
    assert len(watch) == 49 + 50  # the revoked key's sockets and the departed one are forgotten
    for socket in sockets["good"][1:] + sockets["broken"]:
        watch.forget(cast(WebSocket, socket))
    assert len(watch) == 0


class FakeHandler:
    def __init__(self) -> None:
        self.pings = 0

    def ping_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pings += 1


async def test_the_keepalive_wheel_pings_each_connection_once_per_interval_and_stops_when_empty() -> None:
    wheel = ws._Keepalive(0.3)
    handlers = [FakeHandler() for _ in range(30)]
    for h in handlers:
        wheel.add(cast(Any, h))
        wheel.add(cast(Any, h))  # twice: still one entry
    assert len(wheel) == 30
    await asyncio.sleep(0.15)
    assert all(h.pings == 0 for h in handlers)  # not before about one interval
    await asyncio.sleep(0.8)  # 0.95 s: three intervals (fewer pings only if the timer runs late)
    assert all(1 <= h.pings <= 3 for h in handlers), [h.pings for h in handlers]
    assert len({h.pings for h in handlers}) == 1  # all of them alike: one slot each round
    for h in handlers:
        wheel.remove(cast(Any, h))
    assert len(wheel) == 0
    await asyncio.sleep(0.25)
    assert wheel._timer is None  # no timer while nothing is kept alive
