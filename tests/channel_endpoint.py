"""A channel's endpoint for the publication tests: a real HTTP server (uvicorn on a free port, in the
test's event loop) that checks every signature itself, can fail its first responses, can be slow, and
keeps what a careful receiver would: per SKU the value with the highest version it has acknowledged.
Every push is kept with the process that sent it (X-Stockwire-Publisher) and when it was being handled."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.live import free_port


@dataclass
class Received:
    body: dict[str, Any]
    signature_ok: bool
    status: int
    publisher: str = ""  # X-Stockwire-Publisher: which process pushed (host:pid)
    started: float = 0.0  # time.monotonic() when the request arrived
    ended: float = 0.0  # and when its answer was ready


@dataclass
class Endpoint:
    secret: str
    fail_first: int = 0
    delay: float = 0.0  # seconds each push takes to handle: a slow endpoint acknowledges late
    # per SKU: (version, available) of the newest value acknowledged with a 2xx
    shows: dict[str, tuple[int, int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    # items carrying a version below one this endpoint had already acknowledged for that SKU
    older_than_acknowledged: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # from acknowledged pushes, in order
    first_failure: asyncio.Event = field(default_factory=asyncio.Event)
    # the first failing response waits for this, so a test can change stock while the endpoint is down
    release_first_failure: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.fail_first == 0:
            self.release_first_failure.set()

    async def push(self, request: Request) -> Response:
        started = time.monotonic()
        raw = await request.body()
        if self.delay:
            await asyncio.sleep(self.delay)
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        signature_ok = hmac.compare_digest(expected, request.headers.get("X-Stockwire-Signature", ""))
        body = json.loads(raw)
        for item in body["items"]:
            if item["version"] < self.shows.get(item["sku"], (0, 0))[0]:
                self.older_than_acknowledged.append(item)
        if not signature_ok:
            status = 401
        elif sum(1 for r in self.received if r.status == 503) < self.fail_first:
            status = 503
        else:
            status = 200
        received = Received(body, signature_ok, status, request.headers.get("X-Stockwire-Publisher", ""), started)
        self.received.append(received)
        if status == 503 and not self.first_failure.is_set():
            self.first_failure.set()
            await self.release_first_failure.wait()
        if status == 200:
            for item in body["items"]:
                if item["version"] > self.shows.get(item["sku"], (0, 0))[0]:  # never go back to an older value
                    self.shows[item["sku"]] = (item["version"], item["available"])
            self.alerts += body["alerts"]
        received.ended = time.monotonic()
        self.changed.set()
        return JSONResponse({"ok": status == 200}, status_code=status)

    async def wait_until(self, condition: Any, what: str, within: float = 30.0) -> None:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; received {self.received}") from None


@asynccontextmanager
async def serve(endpoint: Endpoint) -> AsyncIterator[Endpoint]:
    port = free_port()
    app = Starlette(routes=[Route("/stock", endpoint.push, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            for _ in itertools.count():  # uvicorn has no event for "listening": poll its flag
                if server.started:
                    break
                await asyncio.sleep(0.01)
        endpoint.url = f"http://127.0.0.1:{port}/stock"
        yield endpoint
    finally:
        endpoint.release_first_failure.set()
        server.should_exit = True
        await task
