"""GraphiQL works with no internet: its page loads every script and style from this server, the very
files Strawberry's page names on unpkg.com (their integrity hashes match), and a browser that may reach
nothing but this server shows the editor."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from urllib.parse import quote, urlencode, urlparse

import httpx
import pytest
from playwright.sync_api import Route, expect

from app.graphql import graphiql
from tests.conftest import Api, _truncate
from tests.live import Server, start_server, stop_server
from tests.ops_browser import chromium, screenshot_path

HTML = {"accept": "text/html"}
_TAG = re.compile(r"<(?:script|link)\b[^>]*>", re.S)


def _local_files(page: str) -> dict[str, str]:
    """Each file the page loads from here -> the integrity attribute of its tag."""
    found: dict[str, str] = {}
    for tag in _TAG.findall(page):
        url = re.search(r'(?:src|href)="([^"]+)"', tag)
        if url is None or not url.group(1).startswith(graphiql.PREFIX):
            continue
        integrity = re.search(r'integrity="([^"]+)"', tag)
        assert integrity is not None, tag
        found[url.group(1).removeprefix(graphiql.PREFIX)] = integrity.group(1)
    return found


def _sha384(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()


def test_every_file_kept_here_is_the_one_the_page_checks() -> None:
    page = graphiql.page()
    assert "unpkg.com" not in page
    files = _local_files(page)
    assert sorted(files) == sorted(graphiql.FILES.values())  # every URL of Strawberry's page, rewritten
    for name, integrity in files.items():
        body = gzip.decompress((graphiql.ASSETS / f"{name}.gz").read_bytes())
        assert _sha384(body) == integrity, name


@pytest.mark.postgres
async def test_the_page_and_its_files_are_served_from_here(api: Api) -> None:
    page = await api.client.get("/graphql", headers=HTML)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "unpkg.com" not in page.text
    files = _local_files(page.text)
    assert len(files) == 7
    for name, integrity in files.items():
        zipped = await api.client.get(graphiql.PREFIX + name, headers={"accept-encoding": "gzip"})
        plain = await api.client.get(graphiql.PREFIX + name, headers={"accept-encoding": "identity"})
        assert zipped.status_code == plain.status_code == 200
        assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
        expected = "text/css" if name.endswith(".css") else "text/javascript"
        assert zipped.headers["content-type"].startswith(expected)
        assert _sha384(zipped.content) == _sha384(plain.content) == integrity, name  # httpx unzips
    missing = await api.client.get(graphiql.PREFIX + "../settings.py")
    assert missing.status_code == 404
    assert (await api.client.get(graphiql.PREFIX + "graphiql.min.js.gz")).status_code == 404


_RECEIVED = (
    'mutation { recordInventoryEvents(input: [{source: "erp", externalId: "%s", type: RECEIVED, '
    'skuCode: "SKU-GRAPHIQL", locationCode: "WH-GRAPHIQL", quantity: %d, occurredAt: "2026-01-01T00:00:00Z"}]) '
    "{ userErrors { code } } }"
)


def _post(server: Server, query: str) -> None:
    """A mutation of the test's own, which must answer no error and no userError."""
    body = httpx.post(f"{server.url}/graphql", json={"query": query}, headers=server.headers).json()
    assert "errors" not in body and all(v["userErrors"] == [] for v in body["data"].values()), body


@pytest.fixture
def server(postgres_url: str) -> Iterator[Server]:
    asyncio.run(_truncate(postgres_url))
    started = start_server(postgres_url)
    try:
        yield started
    finally:
        stop_server(started)


@pytest.mark.postgres
@pytest.mark.slow
def test_graphiql_shows_its_editor_in_a_browser_that_reaches_only_this_server(server: Server) -> None:
    ours = urlparse(server.url).netloc
    elsewhere: list[str] = []

    def only_here(route: Route) -> None:
        if urlparse(route.request.url).netloc == ours or route.request.url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    _post(
        server,
        'mutation { upsertLocations(input: [{code: "WH-GRAPHIQL", name: "East", kind: WAREHOUSE}]) '
        "{ userErrors { code } } }",
    )
    # what a developer does: a query, and the key in GraphiQL's Headers (here through the page's URL)
    headers = json.dumps({"Authorization": f"Bearer {server.key}"})
    # quote: %20 for a space, not +, which the page's decodeURIComponent would keep
    wanted = urlencode({"q": "{ locations { code } }", "headers": headers}, quote_via=quote)
    with chromium() as browser:
        page = browser.new_page()
        page.route("**/*", only_here)
        page.goto(f"{server.url}/graphql?{wanted}")
        expect(page.get_by_test_id("graphiql-container")).to_be_visible(timeout=20_000)
        expect(page.locator(".graphiql-query-editor")).to_contain_text("locations")
        page.locator(".graphiql-execute-button").click()
        expect(page.locator(".graphiql-response")).to_contain_text('"WH-GRAPHIQL"', timeout=10_000)
        page.screenshot(path=str(screenshot_path("graphiql.png")))

        # a subscription: GraphiQL sends its Headers in connection_init, where the websocket takes its key
        _post(server, 'mutation { upsertSkus(input: [{code: "SKU-GRAPHIQL", name: "Tee"}]) { userErrors { code } } }')
        _post(server, _RECEIVED % ("g-1", 5))
        live = 'subscription { availabilityChanged(skuCodes: ["SKU-GRAPHIQL"]) { skuCode available } }'
        page.goto(f"{server.url}/graphql?{urlencode({'q': live, 'headers': headers}, quote_via=quote)}")
        expect(page.locator(".graphiql-query-editor")).to_contain_text("availabilityChanged", timeout=20_000)
        page.locator(".graphiql-execute-button").click()
        expect(page.locator(".graphiql-response")).to_contain_text('"available": 5', timeout=10_000)
        _post(server, _RECEIVED % ("g-2", 3))
        expect(page.locator(".graphiql-response")).to_contain_text('"available": 8', timeout=10_000)
        page.screenshot(path=str(screenshot_path("graphiql-subscription.png")))
    assert elsewhere == []
