"""What the GraphQL-over-HTTP edge answers before execution: the media type negotiated from Accept,
the Problem a refused request becomes (status, code, message), and the checks on a request body
(its size as it streams in, its JSON shape, strings no column could store). The view that applies
them is app/graphql/http_view.py; app/graphql/http.py describes the whole protocol."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import Message, Receive

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
_ACCEPTABLE = {GRAPHQL_RESPONSE: GRAPHQL_RESPONSE, JSON: JSON, "application/*": JSON, "*/*": JSON}


class Problem(Exception):
    """A request refused before (or instead of) GraphQL execution, with its status and code."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class _BodyTooLarge(Exception):
    pass


class BadBody(json.JSONDecodeError):
    """A body or websocket message that is JSON-shaped but unacceptable. A JSONDecodeError so that
    Strawberry's own handling applies: HTTP 400, and on websockets close 4400 (graphql-transport-ws).
    `code`: BAD_REQUEST for a malformed request, BAD_USER_INPUT for a value nothing could store."""

    def __init__(self, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message, "", 0)
        self.code = code


def negotiate(accept: str | None) -> str | None:
    """The media type to answer in: the highest-q supported one (the earlier on a tie), or None."""
    if accept is None or not accept.strip():
        return GRAPHQL_RESPONSE  # the spec's default since 2025-01-01
    best: str | None = None
    best_q = 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        choice = _ACCEPTABLE.get(media.lower())
        if choice is not None and q > best_q:
            best, best_q = choice, q
    return best


def _limit_body(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return receive_limited


def _unstorable(value: object) -> str | None:
    """What no database column could take in any string of a decoded body: NUL (PostgreSQL refuses
    it in text) or a lone surrogate (`"\\ud800"`: not encodable as UTF-8). Values a document's literals
    unescape to are checked per argument (app/graphql/input_guard.py)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "strings may not contain NUL characters"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "strings may not contain lone surrogates (not valid Unicode)"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _unstorable(k) or _unstorable(v)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _unstorable(v)
            if found:
                return found
    return None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "a number"
