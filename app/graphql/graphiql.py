"""GraphiQL from this server: the page Strawberry ships, with its scripts and styles served from here.

Strawberry's page loads React, GraphiQL and its explorer plugin from unpkg.com. With no way out to the
internet (a laptop on a plane, a locked-down network, CI's loopback-only machines) the page stayed at
"Loading..." for ever, and the README's first command promises GraphiQL. The same files are kept here
(`graphiql_assets/`, gzip-compressed, byte for byte what npm has under those versions: each one's
sha384 is the `integrity` attribute Strawberry's page already carries, so the browser checks them as
before) and the page is rewritten to fetch them from `/graphiql/assets/`. `graphiql_assets/SOURCES.md`
says how to refresh them when Strawberry's page moves to other versions; tests/test_graphiql.py fails
then, since a URL of the page would have no local file.
"""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from strawberry.http.ides import get_graphql_ide_html

ASSETS = Path(__file__).parent / "graphiql_assets"
PREFIX = "/graphiql/assets/"

# the URL in Strawberry's page -> the file here (without its .gz)
FILES = {
    "https://unpkg.com/react@18.2.0/umd/react.production.min.js": "react.production.min.js",
    "https://unpkg.com/react-dom@18.2.0/umd/react-dom.production.min.js": "react-dom.production.min.js",
    "https://unpkg.com/js-cookie@3.0.5/dist/js.cookie.min.js": "js.cookie.min.js",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.css": "graphiql.min.css",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.js": "graphiql.min.js",
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/style.css": "plugin-explorer.css",
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/index.umd.js": "plugin-explorer.umd.js",
}

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class UnknownAsset(RuntimeError):
    """Strawberry's page loads a file from elsewhere that is not kept here (see SOURCES.md)."""


@functools.cache
def page() -> str:
    """Strawberry's GraphiQL page, loading every script and style from this server."""
    html = get_graphql_ide_html(graphql_ide="graphiql")
    for url, name in FILES.items():
        html = html.replace(f'"{url}"', f'"{PREFIX}{name}"')
    elsewhere = re.findall(r'(?:src|href)="(https?://[^"]+)"', html)
    if elsewhere:
        raise UnknownAsset(f"GraphiQL's page loads {elsewhere}: add them to app/graphql/graphiql.py")
    return html


@functools.cache
def _compressed(name: str) -> bytes:
    return (ASSETS / f"{name}.gz").read_bytes()


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in FILES.values():
        return Response("not found", status_code=404, media_type="text/plain")
    headers = {
        # the name carries no version, but a release only changes a file together with its page's integrity
        # hash: a browser holding an old copy is refused it by that check and fetches again after a day
        "Cache-Control": "public, max-age=86400",
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    body = _compressed(name)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
    else:
        body = gzip.decompress(body)
    return Response(body, media_type=_TYPES[Path(name).suffix], headers=headers)


def graphiql_routes() -> list[BaseRoute]:
    return [Route(PREFIX + "{name}", _asset)]
