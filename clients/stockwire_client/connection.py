"""Requests over HTTP (gql + httpx): by hash, falling back to the text once, retried where it is safe."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from gql import Client
from gql.client import AsyncClientSession
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.httpx import HTTPXAsyncTransport

from .operations import OPERATIONS, Operation

log = logging.getLogger("stockwire_client")

# errors a server answers while it (or its database) is briefly unwell: worth the same request again
RETRYABLE_CODES = frozenset({"INTERNAL_SERVER_ERROR", "UNAVAILABLE"})


class StockwireError(Exception):
    """The server refused the request itself (authentication, scope, a malformed request): `code` says
    which (`UNAUTHENTICATED`, `FORBIDDEN`, `PERSISTED_QUERY_REQUIRED`, ...). Retrying cannot help."""

    def __init__(self, message: str, code: str | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.errors = errors or []


class Unreachable(Exception):
    """The request may or may not have reached the server, and every retry failed the same way."""


def error_code(errors: Any) -> str | None:
    for error in errors if isinstance(errors, list) else []:
        code = ((error or {}).get("extensions") or {}).get("code") if isinstance(error, dict) else None
        if isinstance(code, str):
            return code
    return None


def _message(errors: Any) -> str:
    if isinstance(errors, list):
        return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
    return str(errors)


def retryable(exc: BaseException) -> bool:
    """A failure after which the same (idempotent) request may be sent again."""
    if isinstance(exc, httpx.TransportError | TransportConnectionFailed | TransportClosed | OSError | TimeoutError):
        return True  # the request or its answer was lost on the way
    if isinstance(exc, TransportServerError):
        return (exc.code or 500) >= 500
    if isinstance(exc, TransportQueryError):
        return error_code(exc.errors) in RETRYABLE_CODES
    return False


@dataclass
class Retry:
    attempts: int = 6
    first_delay: float = 0.1
    max_delay: float = 2.0


@dataclass
class Connection:
    """The HTTP side of a client: `async with` it (a StockwireClient does)."""

    url: str
    api_key: str | None = None
    by_hash: bool = True  # send the hash alone first (the text only if the server does not know it)
    timeout: float = 30.0
    retry: Retry = field(default_factory=Retry)
    _session: AsyncClientSession | None = None
    _client: Client | None = None
    _text_needed: set[str] = field(default_factory=set)  # operations the server did not know by hash

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def __aenter__(self) -> Connection:
        transport = HTTPXAsyncTransport(url=self.url, headers=self.headers, timeout=self.timeout)
        self._client = Client(transport=transport)
        self._session = await self._client.connect_async()  # type: ignore[no-untyped-call]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close_async()  # type: ignore[no-untyped-call]
        self._client = self._session = None

    async def execute(self, name: str, variables: dict[str, Any]) -> dict[str, Any]:
        """One operation, once: its data, or StockwireError / a transport exception."""
        assert self._session is not None, "use `async with` first"
        operation = OPERATIONS[name]
        with_text = not self.by_hash or name in self._text_needed
        try:
            return await self._send(operation, variables, with_text)
        except TransportQueryError as exc:
            if with_text or error_code(exc.errors) != "PERSISTED_QUERY_NOT_FOUND":
                raise
        self._text_needed.add(name)  # the server has no manifest (or an older one): the text from now on
        return await self._send(operation, variables, True)

    async def _send(self, operation: Operation, variables: dict[str, Any], with_text: bool) -> dict[str, Any]:
        assert self._session is not None
        result = await self._session.execute(operation.request(variables, with_text=with_text))
        return dict(result)

    async def call(self, name: str, variables: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """An operation that is safe to repeat, retried with backoff on lost requests and 5xx answers;
        GraphQL errors that a retry cannot fix raise StockwireError."""
        delay = self.retry.first_delay
        attempts = self.retry.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self.execute(name, variables)
            except Exception as exc:
                if not retryable(exc):
                    if isinstance(exc, TransportQueryError):
                        raise StockwireError(_message(exc.errors), error_code(exc.errors), exc.errors) from exc
                    if isinstance(exc, TransportServerError):
                        raise StockwireError(str(exc), f"HTTP_{exc.code}") from exc
                    raise
                if attempt == attempts:
                    raise Unreachable(f"{name}: gave up after {attempts} attempts: {exc!r}") from exc
                log.warning("%s failed (%r); retrying in about %.2fs", name, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")
