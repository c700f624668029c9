"""A small Python client for Stockwire's live availability: reconnects, and resumes by version.

    from stockwire_client import availability_changes

    async for availability in availability_changes("ws://localhost:8000/graphql", ["SKU-1"], api_key=KEY):
        print(availability["skuCode"], availability["available"], availability["version"])

Over graphql-transport-ws (the `websockets` package is the only dependency). The server sends the
current state of what was asked for first, then every change, with a `version` per SKU (or per
SKU and location) that only goes up. This client keeps the last version it handed you per key; when
the connection drops it reconnects with capped exponential backoff and jitter, subscribes again, and
passes on only what is newer than what you already have, so across any number of reconnects you see
each key's versions strictly increasing and end at the latest state. Versions may skip: a state you
missed while disconnected is replaced by the newer one, which is all a storefront needs.

Liveness: the server pings every few seconds and this client answers; it also pings when the line is
quiet, and reconnects when nothing at all arrives for `ping_interval + pong_timeout` seconds.
Errors that a retry cannot fix (a refused key, a bad query or argument) raise `SubscriptionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

log = logging.getLogger("stockwire_client")

PROTOCOL = Subprotocol("graphql-transport-ws")
LEVEL_FIELDS = (
    "skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version "
    "updatedAt"
)
# what a storefront key may read (README, Security): the quantities behind the figure need `router`
AVAILABILITY_QUERY = """subscription($skus: [String!], $channel: String) {
  availabilityChanged(skuCodes: $skus, channelCode: $channel) {
    skuCode channelCode available version locations { locationCode available } } }"""
STOCK_LEVEL_QUERY = f"""subscription($skus: [String!], $locations: [String!]) {{
  stockLevelChanged(skuCodes: $skus, locationCodes: $locations) {{ {LEVEL_FIELDS} }} }}"""

# Close codes after which reconnecting cannot help (graphql-transport-ws and our server's own).
FATAL_CLOSE_CODES = {4400, 4401, 4403, 4406}


class SubscriptionError(Exception):
    """The server refused the subscription (bad query, argument, key or scope); retrying would not help."""


@dataclass
class Subscription:
    """One GraphQL subscription, kept alive across disconnects; iterate it for the payloads.

    `key_of` names what `version` counts per (e.g. the SKU code); `versions` is what you have.
    """

    url: str
    query: str
    variables: dict[str, Any]
    root_field: str
    key_of: Callable[[dict[str, Any]], str]
    api_key: str | None = None
    min_backoff: float = 0.5
    max_backoff: float = 30.0
    ping_interval: float = 20.0
    pong_timeout: float = 10.0
    open_timeout: float = 10.0
    versions: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        backoff = self.min_backoff
        while True:
            try:
                async with contextlib.aclosing(self._session()) as session:
                    async for payload in session:
                        backoff = self.min_backoff  # it works again: the next failure starts from the bottom
                        if self._is_new(payload):
                            yield payload
                log.info("server completed the subscription; subscribing again")
            except SubscriptionError:
                raise
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                log.warning("subscription connection lost (%s); reconnecting in about %.1fs", exc, backoff)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.max_backoff)
            self.reconnects += 1

    def _is_new(self, payload: dict[str, Any]) -> bool:
        key, version = self.key_of(payload), int(payload["version"])
        if version <= self.versions.get(key, 0):
            return False  # already had it (the state a reconnect re-sends, or a repeat)
        self.versions[key] = version
        return True

    async def _session(self) -> AsyncGenerator[dict[str, Any], None]:
        """One connection: init, subscribe, then the payloads until it ends."""
        try:
            ws = await connect(self.url, subprotocols=[PROTOCOL], open_timeout=self.open_timeout)
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise SubscriptionError(f"the server refused the connection: HTTP {exc.response.status_code}") from exc
            raise
        async with ws:
            init: dict[str, Any] = {"type": "connection_init", "payload": {}}
            if self.api_key:
                init["payload"]["authorization"] = f"Bearer {self.api_key}"
            await ws.send(json.dumps(init))
            async with asyncio.timeout(self.open_timeout):
                while (await self._receive(ws)).get("type") != "connection_ack":
                    pass
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": self._request()}))
            while True:
                message = await self._receive(ws)
                kind = message.get("type")
                if kind == "next":
                    payload = message.get("payload") or {}
                    if payload.get("errors"):
                        raise SubscriptionError(_error_text(payload["errors"]))
                    yield payload["data"][self.root_field]
                elif kind == "error":
                    raise SubscriptionError(_error_text(message.get("payload")))
                elif kind == "complete":
                    return

    def _request(self) -> dict[str, Any]:
        return {"query": self.query, "variables": self.variables}

    async def _receive(self, ws: ClientConnection) -> dict[str, Any]:
        """The next protocol message other than ping/pong (pings are answered, a quiet line is probed)."""
        pinged = False
        while True:
            try:
                async with asyncio.timeout(self.pong_timeout if pinged else self.ping_interval):
                    raw = await ws.recv()
            except TimeoutError:
                if pinged:
                    raise TimeoutError(f"no answer from the server within {self.pong_timeout}s") from None
                await ws.send(json.dumps({"type": "ping"}))
                pinged = True
                continue
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code in FATAL_CLOSE_CODES:
                    reason = closed.rcvd.reason if closed.rcvd is not None else ""
                    raise SubscriptionError(f"the server closed the connection: {code} {reason}") from closed
                raise
            pinged = False  # anything at all proves the server is there
            message = json.loads(raw)
            if not isinstance(message, dict):
                continue
            if message.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif message.get("type") != "pong":
                return message


def _error_text(errors: Any) -> str:
    if isinstance(errors, list):
        return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
    return str(errors)


def availability_changes(
    url: str, sku_codes: list[str], channel_code: str | None = None, *, api_key: str | None = None, **options: Any
) -> Subscription:
    """Availability of these SKUs (optionally as one channel sees it): the current state, then each change."""
    return Subscription(
        url=url,
        query=AVAILABILITY_QUERY,
        variables={"skus": sku_codes, "channel": channel_code},
        root_field="availabilityChanged",
        key_of=lambda p: str(p["skuCode"]),
        api_key=api_key,
        **options,
    )


def stock_level_changes(
    url: str,
    sku_codes: list[str] | None = None,
    location_codes: list[str] | None = None,
    *,
    api_key: str | None = None,
    **options: Any,
) -> Subscription:
    """Per-location stock of these SKUs and/or locations: the current state, then each change."""
    return Subscription(
        url=url,
        query=STOCK_LEVEL_QUERY,
        variables={"skus": sku_codes, "locations": location_codes},
        root_field="stockLevelChanged",
        key_of=lambda p: f"{p['skuCode']}\x1f{p['locationCode']}",
        api_key=api_key,
        **options,
    )
