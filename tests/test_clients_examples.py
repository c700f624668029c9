"""The Python examples in clients/examples run against a live server on a fresh PostgreSQL database
(the TypeScript ones run in clients/ts/test/examples.test.ts)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import Server, free_port, start_server, stop_server
from tests.subscribers import TIMEOUT, Http, http_client, unique

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EXAMPLES = Path(__file__).resolve().parents[1] / "clients" / "examples"


@pytest.fixture(scope="module")
def server(client_database: dict[str, Any]) -> Iterator[Server]:
    live = start_server(client_database["url"], key=client_database["keys"]["all"])
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture
async def http(server: Server) -> AsyncIterator[Http]:
    async with http_client(server.url, server.key) as client:
        yield Http(client)


async def _run(*args: str) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return process.returncode, out.decode().splitlines()


async def test_the_checkout_service_holds_at_cart_commits_at_payment_releases_on_abandon(
    client_database: dict[str, Any], server: Server, http: Http
) -> None:
    sku, wh = unique("SKU"), unique("WH")
    await http.catalogue([sku], [wh])
    await http.event("RECEIVED", sku, wh, 5)
    _, lines = await _run(
        str(EXAMPLES / "checkout_service.py"), "--url", f"{server.url}/graphql",
        "--key", client_database["keys"]["checkout"], "demo", sku,
    )  # fmt: skip
    assert [line.split()[0] for line in lines] == ["HELD", "HELD", "REFUSED", "COMMITTED", "RELEASED"], lines
    assert lines[2].endswith("INSUFFICIENT_STOCK") and lines[3].endswith("COMMITTED") and lines[4].endswith("RELEASED")
    level = (await http.levels([sku]))[f"{sku}|{wh}"]
    # the paid cart's 2 units are committed; the replaced hold (1) and the abandoned cart (1) are back
    assert (level["onHand"], level["committed"], level["reserved"], level["available"]) == (5, 2, 0, 3)


async def test_the_channel_endpoint_applies_only_verified_pushes(server: Server, http: Http) -> None:
    sku, wh, channel, secret = unique("SKU"), unique("WH"), unique("WEB"), "s3cret-for-the-example"
    port = free_port()
    endpoint = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "channel_endpoint.py"), "--port", str(port), "--secret", secret,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert endpoint.stdout is not None
        async with asyncio.timeout(TIMEOUT), httpx.AsyncClient() as client:
            while True:  # until it listens; a push signed with the wrong secret
                try:
                    forged = await client.post(
                        f"http://127.0.0.1:{port}/stock", content=b'{"items": []}',
                        headers={"X-Stockwire-Signature": "sha256=" + "0" * 64},
                    )  # fmt: skip
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
        assert forged.status_code == 401
        assert (await endpoint.stdout.readline()).decode().startswith("REJECTED  bad signature")

        await http.catalogue([sku], [wh])
        data = await http.ok(
            "mutation($i: [ChannelInput!]!) { upsertChannels(input: $i) { userErrors { code message } } }",
            i=[{"code": channel, "name": channel, "locationCodes": [wh],
                "endpointUrl": f"http://127.0.0.1:{port}/stock", "endpointSecret": secret}],
        )  # fmt: skip
        assert data["upsertChannels"]["userErrors"] == []
        await http.event("RECEIVED", sku, wh, 7)
        seen: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while not any(f"VERIFIED  {channel} {sku} available 7 " in line for line in seen):
                seen.append((await endpoint.stdout.readline()).decode())
        assert not any(line.startswith("REJECTED") for line in seen), seen
    finally:
        endpoint.terminate()
        await endpoint.wait()
