"""clients/: the Python client reconnects and resumes by version; the storefront example prints changes.

The client talks to a live server through a TCP proxy the test controls, so the connection can be cut
abruptly (no close frame: what a network failure looks like) and pointed at a restarted server on the
same database, without the client being told anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.stockwire_client import Subscription, SubscriptionError, availability_changes, stock_level_changes
from tests.conftest import create_test_key
from tests.live import Server, start_server, stop_server
from tests.subscribers import TIMEOUT, Http, http_client, unique

pytestmark = pytest.mark.slow  # live server processes

ROOT = Path(__file__).resolve().parents[1]


class Proxy:
    """Forwards TCP connections to `upstream` (a port); `cut()` aborts every open one at once."""

    def __init__(self, upstream: int | None) -> None:
        self.upstream = upstream
        self.accepted = 0
        self.linked = asyncio.Event()  # set at every connection forwarded upstream
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ws_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/graphql"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        for client, server in list(self._links):
            client.transport.abort()
            server.transport.abort()
        self._links.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._link(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.upstream is None:  # "the server is down": refuse by closing at once
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self.linked.set()
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._links.discard(link)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        sink.transport.abort()


class Collector:
    """Runs a client `Subscription` in the background and keeps what it yields."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.payloads: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            async for payload in self.subscription:
                self.payloads.append(payload)
                self._changed.set()
        except Exception as exc:
            self.error = exc
            self._changed.set()

    async def wait_until(self, condition: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition(self.payloads):
                    if self.error is not None:
                        pytest.fail(f"the client failed while waiting for {what}: {self.error!r}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}; the client yielded {self.payloads}")


def _available(value: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda ps: bool(ps) and ps[-1]["available"] == value


@pytest.fixture
def database(tmp_path: Path, new_database: Callable[[], str]) -> tuple[str, str]:
    url = new_database()
    return url, asyncio.run(create_test_key(url))


@pytest.fixture
def server(database: tuple[str, str]) -> Iterator[Server]:
    url, key = database
    live = start_server(url, key=key)
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[Proxy]:
    p = Proxy(server.port)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_the_client_reconnects_after_a_cut_and_a_restart_and_resumes_by_version(
    database: tuple[str, str], server: Server, proxy: Proxy
) -> None:
    url, key = database
    sku, wh = unique("SKU"), unique("WH")
    subscription = availability_changes(proxy.ws_url, [sku], api_key=key, min_backoff=0.05, max_backoff=0.3)
    async with http_client(server.url, key) as client:
        http = Http(client)
        await http.catalogue([sku], [wh])
        await http.event("RECEIVED", sku, wh, 5)
        async with Collector(subscription) as seen:
            await seen.wait_until(_available(5), "the initial state")
            await http.event("RECEIVED", sku, wh, 1)
            await seen.wait_until(_available(6), "a change")

            # 1. the connection is cut and nothing changes meanwhile: the state the server re-sends on
            # the new connection has a version the client already has, so it yields nothing new
            proxy.linked.clear()
            proxy.cut()
            async with asyncio.timeout(TIMEOUT):
                await proxy.linked.wait()  # the client is back, on a new connection
            await http.event("RECEIVED", sku, wh, 1)
            await seen.wait_until(_available(7), "a change after the cut")
            assert [p["available"] for p in seen.payloads] == [5, 6, 7]

            # 2. the server goes away; changes are made through its successor while the client
            # cannot connect; then the successor becomes reachable at the same address
            proxy.upstream = None
            proxy.cut()
            stop_server(server)
            successor = start_server(url, key=key)
            try:
                async with http_client(successor.url, key) as client2:
                    http2 = Http(client2)
                    await http2.event("SOLD", sku, wh, 2)
                    await http2.event("RECEIVED", sku, wh, 10)
                    proxy.upstream = successor.port
                    await seen.wait_until(_available(15), "the state missed while disconnected")
                    await http2.event("SOLD", sku, wh, 1)
                    await seen.wait_until(_available(14), "a change after the restart")
                    truth = await http2.availability(sku)
            finally:
                stop_server(successor)
    assert seen.error is None
    assert subscription.reconnects >= 2
    # each state once, versions strictly increasing across both reconnects; the two changes made
    # while disconnected arrive as one state (the latest), as the client promises
    assert [p["available"] for p in seen.payloads] == [5, 6, 7, 15, 14]
    versions = [p["version"] for p in seen.payloads]
    assert versions == sorted(set(versions)), versions
    assert seen.payloads[-1]["version"] == truth["version"]
    assert subscription.versions == {sku: truth["version"]}


async def test_stock_levels_resume_per_position(database: tuple[str, str], server: Server, proxy: Proxy) -> None:
    _, key = database
    sku, wh1, wh2 = unique("SKU"), unique("WH"), unique("WH")
    subscription = stock_level_changes(proxy.ws_url, [sku], api_key=key, min_backoff=0.05, max_backoff=0.3)
    async with http_client(server.url, key) as client:
        http = Http(client)
        await http.catalogue([sku], [wh1, wh2])
        await http.event("RECEIVED", sku, wh1, 1)
        await http.event("RECEIVED", sku, wh2, 2)
        async with Collector(subscription) as seen:
            await seen.wait_until(lambda ps: len(ps) == 2, "both positions")
            proxy.upstream = None
            proxy.cut()
            await http.event("RECEIVED", sku, wh2, 3)  # one position changes while disconnected
            proxy.upstream = server.port
            await seen.wait_until(lambda ps: len(ps) == 3, "the position that changed")
            await http.event("RECEIVED", sku, wh1, 4)
            await seen.wait_until(lambda ps: len(ps) == 4, "a change after the reconnect")
    # the unchanged position is not yielded again; each position's versions go up
    assert [(p["locationCode"], p["onHand"]) for p in seen.payloads] == [(wh1, 1), (wh2, 2), (wh2, 5), (wh1, 5)]
    assert subscription.reconnects >= 1


async def test_a_refused_key_is_an_error_not_a_reconnect_loop(server: Server) -> None:
    subscription = availability_changes(server.ws_url, ["X"], api_key="not-a-key", min_backoff=0.05)
    with pytest.raises(SubscriptionError):
        async with asyncio.timeout(TIMEOUT):
            async for _ in subscription:
                pass
    assert subscription.reconnects == 0


async def test_the_storefront_example_prints_the_state_then_each_change(
    database: tuple[str, str], server: Server
) -> None:
    _, key = database
    sku1, sku2, wh = unique("SKU"), unique("SKU"), unique("WH")
    async with http_client(server.url, key) as client:
        http = Http(client)
        await http.catalogue([sku1, sku2], [wh])
        await http.event("RECEIVED", sku1, wh, 3)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "clients" / "storefront.py"),
            "--url",
            server.ws_url,
            sku1,
            sku2,
            env={**os.environ, "STOCKWIRE_KEY": key},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert process.stdout is not None
            lines: list[str] = []

            async def read_line() -> str:
                async with asyncio.timeout(TIMEOUT):
                    line = (await process.stdout.readline()).decode()  # type: ignore[union-attr]
                assert line, f"the storefront exited ({process.returncode}) after printing {lines}"
                lines.append(line)
                return line

            first = {(await read_line()).split()[0]: lines[-1] for _ in range(2)}
            assert "IN STOCK" in first[sku1] and first[sku1].split()[3] == "3", first
            assert "SOLD OUT" in first[sku2], first
            await http.event("SOLD", sku1, wh, 3)
            line = await read_line()
            assert line.split()[0] == sku1 and "SOLD OUT" in line and "-3" in line, line
            await http.event("RECEIVED", sku2, wh, 4)
            line = await read_line()
            assert line.split()[0] == sku2 and "IN STOCK" in line and "+4" in line, line
        finally:
            process.terminate()
            await process.wait()
