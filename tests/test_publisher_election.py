"""Issue 16 item 5: one publisher per channel across the fleet, a delivery log, and replay.

Two live server processes share PostgreSQL and one Redis channel (so both hear every change: without
the election both would push). A channel's endpoint (tests/channel_endpoint.py, slow on purpose, so
an acknowledgement lands late and an unelected second process would see the same SKUs still out of
sync) records which process pushed each item (X-Stockwire-Publisher, host:pid) and when. Only one
process pushes; after it is killed with SIGKILL the other takes over within seconds, nothing
acknowledged is lost and no (SKU, version) is pushed by two processes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import defaultdict
from uuid import uuid4

import httpx

from tests.channel_endpoint import Endpoint, Received, serve
from tests.conftest import _truncate
from tests.live import Server, servers
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
SECRET = "s3cret"
SKUS = [f"SKU-E{i}" for i in range(5)]
TAKEOVER_SECONDS = 10.0
SETTLE_SECONDS = 30.0  # two processes on a shared, busy machine: the endpoint catches up within this


def _channel() -> str:
    return f"stockwire.test.{uuid4().hex}"


async def _web_channel(http: Http, url: str, location: str) -> None:
    web = {"code": "WEB", "name": "Web", "locationCodes": [location], "endpointUrl": url, "endpointSecret": SECRET}
    assert (await http.ok(UPSERT_CHANNELS, input=[web]))["upsertChannels"]["userErrors"] == []


async def _truth(http: Http, skus: list[str]) -> dict[str, tuple[int, int]]:
    data = await http.ok(FIGURES, skus=skus)
    return {a["skuCode"]: (a["version"], a["available"]) for a in data["availability"]}


async def _shows(endpoint: Endpoint, truth: dict[str, tuple[int, int]]) -> None:
    await endpoint.wait_until(
        lambda: all(endpoint.shows.get(sku) == figure for sku, figure in truth.items()),
        f"the endpoint to show {truth}",
        SETTLE_SECONDS,
    )


async def _all_in_sync(http: Http) -> None:
    query = 'query { channelPublications(channelCode: "WEB") { inSync } }'
    async with asyncio.timeout(SETTLE_SECONDS):
        while not all(p["inSync"] for p in (await http.ok(query))["channelPublications"]):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def _pid(publisher: str) -> int:
    return int(publisher.rsplit(":", 1)[1])


def _items(received: list[Received]) -> list[tuple[str, str, int, int]]:
    """Every pushed item in arrival order: (publisher, SKU, version, available)."""
    return [(r.publisher, i["sku"], i["version"], i["available"]) for r in received for i in r.body["items"]]


def _pushed_by_two(received: list[Received]) -> dict[tuple[str, int], set[str]]:
    """(SKU, version) pairs that more than one process pushed, with those processes."""
    pushed_by: dict[tuple[str, int], set[str]] = defaultdict(set)
    for publisher, sku, version, _ in _items(received):
        pushed_by[(sku, version)].add(publisher)
    return {key: who for key, who in pushed_by.items() if len(who) > 1}


def _interleaved(received: list[Received]) -> list[tuple[Received, Received]]:
    """Pairs of pushes from two processes that the endpoint was handling at the same time."""
    return [
        (x, y)
        for x, y in itertools.combinations(received, 2)
        if x.publisher != y.publisher and x.started < y.ended and y.started < x.ended
    ]


def _turns(received: list[Received]) -> list[str]:
    """The publishers in the order they pushed, each run of pushes by one process counted once."""
    return [
        publisher for publisher, _ in itertools.groupby(r.publisher for r in sorted(received, key=lambda r: r.started))
    ]


async def _leaders(server: Server) -> float:
    """stockwire_publication_leader{channel="WEB"} on that process: 1 when it publishes the channel."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.url}/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith('stockwire_publication_leader{channel="WEB"}'))
    return float(line.rsplit(" ", 1)[1])


async def test_a_burst_through_both_processes_is_pushed_by_one_publisher(postgres_url: str) -> None:
    """Both processes hear every change (one Redis channel) and changes are made through both at once,
    to a slow endpoint: each process would push the same versions if it were not for the election.
    Checked to fail with `pg_try_advisory_lock` replaced by an always-granted lock."""
    require_postgres()
    require_redis()
    await _truncate(postgres_url)
    skus = [f"SKU-B{i}" for i in range(8)]
    async with serve(Endpoint(SECRET, delay=0.25)) as endpoint:
        with servers(2, postgres_url, REDIS_URL, broadcast_channel=_channel()) as (a, b):
            async with http_client(a.url, a.key) as client_a, http_client(b.url, b.key) as client_b:
                via_a, via_b = Http(client_a), Http(client_b)
                await via_a.catalogue(skus, ["WH-B"])
                await _web_channel(via_a, endpoint.url, "WH-B")

                async def burst(http: Http, quantity: int) -> None:
                    for _ in range(4):
                        await asyncio.gather(*(http.event("RECEIVED", sku, "WH-B", quantity) for sku in skus))
                        await asyncio.sleep(0.1)  # new versions arrive while earlier pushes are in flight

                await asyncio.gather(burst(via_a, 1), burst(via_b, 2))
                truth = await _truth(via_b, skus)
                assert {available for _, available in truth.values()} == {12}  # 4 x 1 + 4 x 2 each
                await _shows(endpoint, truth)
                await _all_in_sync(via_a)

                assert endpoint.received, "nothing was pushed"
                assert all(r.signature_ok and r.status == 200 for r in endpoint.received)
                # each version of each SKU came from one process, and the two never pushed at once
                assert _pushed_by_two(endpoint.received) == {}
                assert _interleaved(endpoint.received) == []
                publishers = {r.publisher for r in endpoint.received}
                assert len(publishers) == 1, publishers
                (publisher,) = publishers
                assert _pid(publisher) in {a.process.pid, b.process.pid}
                # and the processes agree on who that is
                leads = {server.process.pid: await _leaders(server) for server in (a, b)}
                assert leads == {pid: 1.0 if pid == _pid(publisher) else 0.0 for pid in leads}
                assert endpoint.older_than_acknowledged == []


async def test_one_publisher_and_a_takeover_after_kill_9(postgres_url: str) -> None:
    require_postgres()
    require_redis()
    await _truncate(postgres_url)
    async with serve(Endpoint(SECRET, delay=0.2)) as endpoint:
        with servers(2, postgres_url, REDIS_URL, broadcast_channel=_channel()) as (a, b):
            by_pid: dict[int, Server] = {a.process.pid: a, b.process.pid: b}
            async with http_client(a.url, a.key) as client:
                http = Http(client)
                await http.catalogue(SKUS, ["WH-E"])
                await _web_channel(http, endpoint.url, "WH-E")
                for round_ in range(3):
                    for sku in SKUS:
                        await http.event("RECEIVED", sku, "WH-E", 5 + round_)
                await _shows(endpoint, await _truth(http, SKUS))
                publishers = {r.publisher for r in endpoint.received}
                assert len(publishers) == 1, publishers  # one process pushes the channel, not both
                leader = by_pid[_pid(publishers.pop())]
                survivor = b if leader is a else a

            async with http_client(survivor.url, survivor.key) as client:
                http = Http(client)
                # everything is acknowledged before the kill: the in-flight batch is the one allowed repeat
                await _all_in_sync(http)
                acked_before = dict(endpoint.shows)
                os.kill(leader.process.pid, signal.SIGKILL)
                leader.process.wait()
                killed_at = time.monotonic()
                for sku in SKUS[:3]:
                    await http.event("SOLD", sku, "WH-E", 2)
                truth = await _truth(http, SKUS)
                await _shows(endpoint, truth)
                took_over_in = time.monotonic() - killed_at

                # no acknowledged version lost: the endpoint shows at least what it showed, and now the truth
                assert all(endpoint.shows[s][0] >= acked_before[s][0] for s in acked_before)
                assert endpoint.shows == truth
                # no (SKU, version) pushed by two processes; the leader's turn, then the survivor's, never both
                assert _pushed_by_two(endpoint.received) == {}
                assert _interleaved(endpoint.received) == []
                assert [_pid(p) for p in _turns(endpoint.received)] == [leader.process.pid, survivor.process.pid]
                assert all(
                    r.started > killed_at for r in endpoint.received if _pid(r.publisher) == survivor.process.pid
                )
                assert took_over_in < TAKEOVER_SECONDS

                await _all_in_sync(http)  # the answers are recorded after the endpoint got the pushes
                # the delivery log names both processes, newest (the survivor's) first
                log = (await http.ok(DELIVERIES, first=100))["channelDeliveries"]
                assert log[0]["status"] == "DELIVERED", log
                assert _pid(log[0]["publisher"]) == survivor.process.pid, log
                assert {_pid(d["publisher"]) for d in log} == {a.process.pid, b.process.pid}
                assert sum(d["items"] for d in log) == len(_items(endpoint.received))
                assert max(d["maxVersion"] for d in log) == max(v for v, _ in truth.values())

                # replay from a version: those SKUs are pushed again, by the survivor
                count = len(endpoint.received)
                replayed = (await http.ok(REPLAY, **{"from": 0}))["replayChannel"]
                assert replayed == {"replayed": len(SKUS), "userErrors": []}
                await endpoint.wait_until(
                    lambda: len(_items(endpoint.received[count:])) >= len(SKUS), "the replay", SETTLE_SECONDS
                )
                again = _items(endpoint.received[count:])
                assert {_pid(p) for p, *_ in again} == {survivor.process.pid}
                assert sorted((s, v) for _, s, v, _ in again) == sorted((s, v) for s, (v, _) in truth.items())
                bad = (await http.ok(REPLAY, **{"from": -1}))["replayChannel"]
                assert bad["userErrors"] == [{"code": "INVALID_INPUT", "field": ["fromVersion"]}]
