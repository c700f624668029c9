"""An order router: routes incoming orders with routeAndReserve and retries the ones that wait for stock.

    python clients/order_router.py --url http://localhost:8000/graphql --key "$STOCKWIRE_KEY" \\
        --locations WH-EAST,WH-WEST,STORE-12 < orders.jsonl

Each input line is one order as JSON, the routeAndReserve input, for example
    {"orderRef": "SO-1001", "lines": [{"skuCode": "TEE-M", "quantity": 2}],
     "destination": {"latitude": 39.74, "longitude": -104.99}}
(`channelCode`, `cartRef`, `ttlSeconds`, `allowSplit` pass through; `--channel` sets a default channel).

The key needs the `router` scope (`stockwire keys create --scopes router`). What it does:
- subscribes to `stockLevelChanged` for its locations (through `stockwire_client`, which reconnects and
  resumes by version) and keeps what each of them can sell now;
- calls `routeAndReserve` for every incoming order; the orderRef is the idempotency key, so sending the
  same order twice (a retry after a timeout, a restart that re-reads its input) holds stock once;
- an order refused only for want of stock (INSUFFICIENT_STOCK) waits; when one of its locations shows
  more available of a SKU the order lacks, the router routes it again. Any other refusal (an unknown
  SKU, a bad quantity) is final: retrying cannot fix it;
- prints one line per outcome: ROUTED (with the shipments and the router's reason), WAITING, REJECTED.
The decision behind any order can be read back later with the `routingDecisions(orderRef:)` query.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stockwire_client import SubscriptionError, stock_level_changes

log = logging.getLogger("order_router")

ROUTE_AND_RESERVE = """mutation($input: RouteOrderInput!) {
  routeAndReserve(input: $input) {
    decision { id reason shipments { locationCode lines { skuCode quantity } } }
    reservation { id status expiresAt lines { skuCode locationCode quantity } }
    userErrors { code message field }
  }
}"""

ROUTED, WAITING, REJECTED = "ROUTED", "WAITING", "REJECTED"


@dataclass(frozen=True)
class Outcome:
    """What became of one routeAndReserve call for an order."""

    order_ref: str
    status: str  # ROUTED, WAITING (for stock) or REJECTED (retrying cannot help)
    reservation_id: str | None = None
    shipments: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # (location, ((sku, units), ...))
    reason: str = ""
    errors: tuple[tuple[str, str], ...] = ()  # (code, message)

    def describe(self) -> str:
        if self.status == ROUTED:
            parts = "; ".join(
                f"{location}: " + ", ".join(f"{sku} x{units}" for sku, units in lines)
                for location, lines in self.shipments
            )
            return f"ROUTED   {self.order_ref}  reservation {self.reservation_id}  [{parts}]  ({self.reason})"
        why = "; ".join(f"{code}: {message}" for code, message in self.errors)
        return f"{self.status:<8} {self.order_ref}  {why}"


class StockwireError(Exception):
    """The server answered with GraphQL `errors` (authentication, scope, a malformed request)."""


@dataclass
class OrderRouter:
    """Routes orders against the server; `watch_stock` wakes the orders waiting for stock.

    `stock` is what each watched location can sell now, per (sku, location), as last pushed by the
    server. It is only a hint for when to retry: routeAndReserve decides on the database's figures.
    """

    http_url: str
    ws_url: str
    api_key: str | None
    locations: list[str]
    channel_code: str | None = None
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)  # orderRef -> order
    _http: httpx.AsyncClient | None = None
    # one routing call at a time per order: a stock change arriving mid-call must not start another,
    # but it is remembered, so an order refused just before the stock arrived is routed again at once
    _busy: dict[str, dict[str, Any]] = field(default_factory=dict)  # orderRef -> order, while routing it
    _recheck: set[str] = field(default_factory=set)
    _none_waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> OrderRouter:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def submit(self, order: dict[str, Any]) -> Outcome:
        """Route one order and hold its stock; parks it as WAITING when stock is short."""
        order = dict(order)
        if self.channel_code is not None:
            order.setdefault("channelCode", self.channel_code)
        ref = str(order["orderRef"])
        self._busy[ref] = order
        try:
            while True:
                self._recheck.discard(ref)
                outcome = await self._route(order)
                if outcome.status != WAITING or ref not in self._recheck:
                    break
        finally:
            self._busy.pop(ref, None)
            self._recheck.discard(ref)
        if outcome.status == WAITING:
            self.waiting[ref] = order
        else:
            self.waiting.pop(ref, None)
        if self.waiting:
            self._none_waiting.clear()
        else:
            self._none_waiting.set()
        self.on_outcome(outcome)
        return outcome

    async def _route(self, order: dict[str, Any]) -> Outcome:
        assert self._http is not None, "use `async with OrderRouter(...)`"
        response = await self._http.post(
            self.http_url, json={"query": ROUTE_AND_RESERVE, "variables": {"input": order}}
        )
        if response.status_code != 200:
            raise StockwireError(f"HTTP {response.status_code}: {response.text[:200]}")
        body = response.json()
        if body.get("errors"):
            raise StockwireError("; ".join(str(e.get("message")) for e in body["errors"]))
        payload = body["data"]["routeAndReserve"]
        ref = str(order["orderRef"])
        errors = tuple((e["code"], e["message"]) for e in payload["userErrors"])
        if payload["reservation"] is not None:
            decision = payload["decision"] or {}
            return Outcome(
                order_ref=ref,
                status=ROUTED,
                reservation_id=payload["reservation"]["id"],
                shipments=tuple(
                    (s["locationCode"], tuple((ln["skuCode"], int(ln["quantity"])) for ln in s["lines"]))
                    for s in decision.get("shipments", [])
                ),
                reason=str(decision.get("reason", "")),
            )
        # short of stock is worth waiting for; anything else (bad input, unknown SKU) is not
        waiting = bool(errors) and all(code == "INSUFFICIENT_STOCK" for code, _ in errors)
        return Outcome(order_ref=ref, status=WAITING if waiting else REJECTED, errors=errors)

    def note_level(self, level: dict[str, Any]) -> list[dict[str, Any]]:
        """Record a pushed stock level; returns the waiting orders it might now let through."""
        key = (str(level["skuCode"]), str(level["locationCode"]))
        before = self.stock.get(key)
        now = int(level["available"])
        self.stock[key] = now
        if now <= 0 or (before is not None and now <= before):
            return []  # nothing became sellable here
        # an order being routed right now may be refused on the figures from before this change
        self._recheck.update(ref for ref, order in self._busy.items() if _wants(order, key[0]))
        return [order for ref, order in self.waiting.items() if ref not in self._busy and _wants(order, key[0])]

    async def watch_stock(self, ready: asyncio.Event | None = None, **options: Any) -> None:
        """Follow the locations' stock levels for ever; route again every waiting order they may unblock.

        `ready` is set once the server's snapshot of the current levels has arrived (or at once when the
        locations hold nothing yet, after the subscription is acknowledged and the first level comes).
        """
        subscription = stock_level_changes(self.ws_url, None, self.locations, api_key=self.api_key, **options)
        async for level in subscription:
            for order in self.note_level(level):
                await self.submit(order)
            if ready is not None and not ready.is_set():
                ready.set()

    async def run(self, orders: AsyncIterator[dict[str, Any]], **options: Any) -> None:
        """Watch stock and route every order as it arrives; when the input ends, return once no order
        is waiting for stock any more."""
        watcher = asyncio.create_task(self.watch_stock(**options))
        try:
            async for order in orders:
                await self.submit(order)
                if watcher.done():
                    watcher.result()  # a fatal subscription error stops the router, loudly
            if self.waiting:
                drained = asyncio.create_task(self._none_waiting.wait())
                await asyncio.wait([watcher, drained], return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
            if watcher.done():
                watcher.result()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _wants(order: dict[str, Any], sku_code: str) -> bool:
    return any(line.get("skuCode") == sku_code for line in order.get("lines", []))


async def _stdin_orders() -> AsyncIterator[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            print(f"SKIPPED  not an order (bad JSON: {exc}): {line[:80]}", flush=True)


def _ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http") if http_url.startswith("http") else http_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("STOCKWIRE_URL", "http://localhost:8000/graphql"))
    parser.add_argument("--key", default=os.environ.get("STOCKWIRE_KEY"), help="API key (router scope)")
    parser.add_argument("--locations", required=True, help="comma-separated location codes to watch")
    parser.add_argument("--channel", help="default channelCode for orders that name none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    router = OrderRouter(
        http_url=args.url,
        ws_url=_ws_url(args.url),
        api_key=args.key,
        locations=[c.strip() for c in args.locations.split(",") if c.strip()],
        channel_code=args.channel,
        on_outcome=lambda outcome: print(outcome.describe(), flush=True),
    )

    async def go() -> None:
        async with router:
            await router.run(_stdin_orders())

    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(go())
        except (SubscriptionError, StockwireError) as exc:
            sys.exit(f"stockwire refused: {exc}")


if __name__ == "__main__":
    main()
