"""Issue 16 item 5: one publisher per channel across the fleet, a delivery log, and replay.

Two live server processes share PostgreSQL; a channel's endpoint (a server of the test's own) records
which process pushed each item (X-Stockwire-Publisher, host:pid). Only one process pushes; after it
is killed with SIGKILL the other takes over within seconds, nothing acknowledged is lost and no
(SKU, version) is pushed by two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from uuid import uuid4

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import _truncate
from tests.live import Server, free_port, servers
from tests.services import REDIS_URL, require_postgres, require_redis
from tests.subscribers import Http, http_client

UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  userErrors { code message } } }"""
FIGURES = (
    """query($skus: [String!]!) { availability(skuCodes: $skus, channelCode: "WEB") { skuCode available version } }"""
)
DELIVERIES = """query($first: Int!) { channelDeliveries(channelCode: "WEB", first: $first) {
  attemptedAt items minVersion maxVersion status latencyMs error publisher } }"""
REPLAY = """mutation($from: Int!) { replayChannel(channelCode: "WEB", fromVersion: $from) {
  replayed userErrors { code field } } }"""
SKUS = [f"SKU-E{i}" for i in range(5)]
TAKEOVER_SECONDS = 10.0


class Recorder:
    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, int, int]] = []  # publisher, sku, version, available
        self.changed = asyncio.Event()

    async def push(self, request: Request) -> Response:
        body = json.loads(await request.body())
        publisher = request.headers.get("X-Stockwire-Publisher", "?")
        # a slow endpoint: an acknowledgement lands late, so an unelected second process would push too
        await asyncio.sleep(0.2)
        for item in body["items"]:
            self.pushes.append((publisher, item["sku"], item["version"], item["available"]))
        self.changed.set()
        return JSONResponse({"ok": True})

    def shows(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for _, sku, version, available in self.pushes:
            if version >= out.get(sku, (-1, 0))[0]:
                out[sku] = (version, available)
        return out

    async def wait_for(self, truth: dict[str, tuple[int, int]], within: float) -> None:
        async with asyncio.timeout(within):
            while any(self.shows().get(sku) != figure for sku, figure in truth.items()):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def endpoint() -> AsyncIterator[tuple[Recorder, str]]:
    recorder, port = Recorder(), free_port()
    app = Starlette(routes=[Route("/stock", recorder.push, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn has no event for "listening"
            await asyncio.sleep(0.01)
        yield recorder, f"http://127.0.0.1:{port}/stock"
    finally:
        server.should_exit = True
        await task


async def _truth(http: Http) -> dict[str, tuple[int, int]]:
    data = await http.ok(FIGURES, skus=SKUS)
    return {a["skuCode"]: (a["version"], a["available"]) for a in data["availability"]}


async def _all_in_sync(http: Http) -> None:
    query = 'query { channelPublications(channelCode: "WEB") { inSync } }'
    async with asyncio.timeout(TAKEOVER_SECONDS):
        while not all(p["inSync"] for p in (await http.ok(query))["channelPublications"]):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def _pid(publisher: str) -> int:
    return int(publisher.rsplit(":", 1)[1])


async def test_one_publisher_and_a_takeover_after_kill_9(postgres_url: str) -> None:
    require_postgres()
    require_redis()
    await _truncate(postgres_url)
    async with endpoint() as (recorder, url):
        # both hear every change (one Redis channel of this test's own): without the election both would push
        with servers(2, postgres_url, REDIS_URL, broadcast_channel=f"stockwire.test.{uuid4().hex}") as (a, b):
            by_pid: dict[int, Server] = {a.process.pid: a, b.process.pid: b}
            async with http_client(a.url, a.key) as client:
                http = Http(client)
                await http.catalogue(SKUS, ["WH-E"])
                web = {
                    "code": "WEB",
                    "name": "Web",
                    "locationCodes": ["WH-E"],
                    "endpointUrl": url,
                    "endpointSecret": "s3cret",
                }
                assert (await http.ok(UPSERT_CHANNELS, input=[web]))["upsertChannels"]["userErrors"] == []
                for round_ in range(3):
                    for sku in SKUS:
                        await http.event("RECEIVED", sku, "WH-E", 5 + round_)
                await recorder.wait_for(await _truth(http), TAKEOVER_SECONDS)
                publishers = {p for p, *_ in recorder.pushes}
                assert len(publishers) == 1, publishers  # one process pushes the channel, not both
                leader = by_pid[_pid(publishers.pop())]
                survivor = b if leader is a else a

            async with http_client(survivor.url, survivor.key) as client:
                http = Http(client)
                # everything is acknowledged before the kill: the in-flight batch is the one allowed repeat
                await _all_in_sync(http)
                acked_before = recorder.shows()
                os.kill(leader.process.pid, signal.SIGKILL)
                leader.process.wait()
                killed_at = time.monotonic()
                for sku in SKUS[:3]:
                    await http.event("SOLD", sku, "WH-E", 2)
                truth = await _truth(http)
                await recorder.wait_for(truth, TAKEOVER_SECONDS)
                took_over_in = time.monotonic() - killed_at
                after = {p for p, *_ in recorder.pushes[sum(1 for _ in acked_before) :]}

                # no acknowledged version lost: the endpoint shows at least what it showed, and now the truth
                shows = recorder.shows()
                assert all(shows[s][0] >= acked_before[s][0] for s in acked_before)
                assert shows == truth
                # no (SKU, version) pushed by two processes
                pushed_by: dict[tuple[str, int], set[str]] = defaultdict(set)
                for publisher, sku, version, _ in recorder.pushes:
                    pushed_by[(sku, version)].add(publisher)
                assert all(len(p) == 1 for p in pushed_by.values()), pushed_by
                assert {_pid(p) for p, *_ in recorder.pushes[-3:]} == {survivor.process.pid}, after
                assert took_over_in < TAKEOVER_SECONDS

                await _all_in_sync(http)  # the answers are recorded after the endpoint got the pushes
                # the delivery log names both processes, newest (the survivor's) first
                log = (await http.ok(DELIVERIES, first=100))["channelDeliveries"]
                assert log[0]["status"] == "DELIVERED", log
                assert _pid(log[0]["publisher"]) == survivor.process.pid, log
                assert {_pid(d["publisher"]) for d in log} == {a.process.pid, b.process.pid}
                assert sum(d["items"] for d in log) == len(recorder.pushes)
                assert max(d["maxVersion"] for d in log) == max(v for v, _ in truth.values())

                # replay from a version: those SKUs are pushed again, by the survivor
                count = len(recorder.pushes)
                replayed = (await http.ok(REPLAY, **{"from": 0}))["replayChannel"]
                assert replayed == {"replayed": len(SKUS), "userErrors": []}
                async with asyncio.timeout(TAKEOVER_SECONDS):
                    while len(recorder.pushes) < count + len(SKUS):
                        recorder.changed.clear()
                        await recorder.changed.wait()
                again = recorder.pushes[count:]
                assert sorted((s, v) for _, s, v, _ in again) == sorted((s, v) for s, (v, _) in truth.items())
                bad = (await http.ok(REPLAY, **{"from": -1}))["replayChannel"]
                assert bad["userErrors"] == [{"code": "INVALID_INPUT", "field": ["fromVersion"]}]
