"""The operations console: one static page and its script, served at /ops (no build step)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# The page holds an operator key: it loads nothing from elsewhere and talks only to this origin.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",  # a deploy replaces the script; revalidate rather than run an old one
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def _console(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=_HEADERS)


def ops_routes() -> list[BaseRoute]:
    return [
        Route("/ops", _console),
        Mount("/ops/static", StaticFiles(directory=STATIC), name="ops-static"),
    ]
