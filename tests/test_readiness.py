"""Issue 16 item 4: readiness tells the truth, and a process starts while Redis is down.

A second server is pointed at a closed port as its broadcast URL (the shared Redis is left alone for
other tests); then a redis-server of the test's own is started on that port: the server connects,
/readyz reports the broadcast ok again and pushes reach its subscribers.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import httpx

from tests.conftest import _truncate
from tests.live import Server, free_port, servers
from tests.services import require_postgres, require_redis
from tests.subscribers import AVAILABILITY_SUB, TRANSPORT_WS, Http, Subscriber, first_messages, http_client
from tests.test_redis_backend import PrivateRedis

TIMEOUT = 20.0


async def _ready(server: Server) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        response = await client.get("/readyz")
    return response.status_code, response.json()


async def _broadcast_up(server: Server) -> float:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        text = (await client.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("stockwire_broadcast_up "))
    return float(line.split()[1])


async def test_readiness_stays_200_with_redis_down_and_push_resumes_when_it_returns(postgres_url: str) -> None:
    require_postgres()
    require_redis()  # redis-server must be installed for the test's own instance
    await _truncate(postgres_url)
    redis = PrivateRedis()
    redis.port = free_port()  # nothing listens there yet
    channel = f"stockwire.test.{uuid4().hex}"
    try:
        # start_server waits for /readyz 200: it would time out if Redis down meant "not ready" or an exit
        with servers(1, postgres_url, redis.url, broadcast_channel=channel) as (server,):
            assert server.process.poll() is None
            status, body = await _ready(server)
            assert status == 200, body
            assert body["broadcast"] == "degraded" and body["checks"]["database"] == "ok", body
            assert await _broadcast_up(server) == 0.0

            async with http_client(server.url, server.key) as client:
                http = Http(client)
                await http.catalogue(["SKU-R"], ["WH-R"])
                await http.event("RECEIVED", "SKU-R", "WH-R", 10)  # queries and events work meanwhile
                assert (await http.availability("SKU-R"))["available"] == 10

                await redis.start()  # Redis comes back on the port the server was given
                async with asyncio.timeout(TIMEOUT):
                    while (await _ready(server))[1]["broadcast"] != "ok":  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                assert await _broadcast_up(server) == 1.0

                async with Subscriber(
                    server.ws_url, AVAILABILITY_SUB, {"skus": ["SKU-R"]}, TRANSPORT_WS, server.key
                ) as sub:
                    await first_messages(sub, 1)
                    await http.event("SOLD", "SKU-R", "WH-R", 3)
                    await sub.wait_until(lambda ps: ps[-1]["available"] == 7, "the push after Redis returned")
    finally:
        await redis.kill()


async def test_readiness_is_503_only_without_the_database(database_url: str) -> None:
    # the in-process app with its database disposed: no connection can be made
    from app.main import create_app
    from app.settings import Settings
    from tests.conftest import create_test_key

    await create_test_key(database_url)
    app = create_app(Settings(database_url=database_url, broadcast_url="memory://"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ok = await client.get("/readyz")
            assert ok.status_code == 200 and ok.json()["broadcast"] == "ok", ok.text
            runtime = app.state.runtime
            real_ping = runtime.ctx.db.ping

            async def unreachable() -> None:
                raise ConnectionRefusedError("database unreachable")

            runtime.ctx.db.ping = unreachable
            try:
                down = await client.get("/readyz")
            finally:
                runtime.ctx.db.ping = real_ping
    assert down.status_code == 503, down.text
    assert down.json()["checks"]["database"].startswith("down"), down.text
