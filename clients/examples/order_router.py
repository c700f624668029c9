"""An order router: routes incoming orders with routeAndReserve and retries the ones that wait for stock.

    python clients/examples/order_router.py --url http://localhost:8000/graphql --key "$STOCKWIRE_KEY" \\
        --locations WH-EAST,WH-WEST,STORE-12 < orders.jsonl

Each input line is one order as JSON, the routeAndReserve input, for example
    {"orderRef": "SO-1001", "lines": [{"skuCode": "TEE-M", "quantity": 2}],
     "destination": {"latitude": 39.74, "longitude": -104.99}}
(`channelCode`, `cartRef`, `ttlSeconds`, `allowSplit` pass through; `--channel` sets a default channel).

The key needs the `router` scope (`stockwire keys create --scopes router`). What it does:
- follows `stockLevelChanged` for its locations (`StockwireClient.watch_stock_levels`, which reconnects and
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stockwire_client import (
    Order,
    ReserveLine,
    StockLevel,
    StockwireClient,
    StockwireError,
    SubscriptionError,
)

log = logging.getLogger("order_router")

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


@dataclass
class OrderRouter:
    """Routes orders against the server; `watch_stock` wakes the orders waiting for stock.

    `stock` is what each watched location can sell now, per (sku, location), as last pushed by the
    server. It is only a hint for when to retry: routeAndReserve decides on the database's figures.
    """

    url: str  # the HTTP endpoint, .../graphql
    api_key: str | None
    locations: list[str]
    channel_code: str | None = None
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)  # orderRef -> order
    _client: StockwireClient | None = None
    # one routing call at a time per order: a stock change arriving mid-call must not start another,
    # but it is remembered, so an order refused just before the stock arrived is routed again at once
    _busy: dict[str, dict[str, Any]] = field(default_factory=dict)  # orderRef -> order, while routing it
    _recheck: set[str] = field(default_factory=set)
    _none_waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> OrderRouter:
        self._client = await StockwireClient(self.url, api_key=self.api_key).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

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
        assert self._client is not None, "use `async with OrderRouter(...)`"
        ref = str(order["orderRef"])
        result = await self._client.router.route_and_reserve(_order(order))
        errors = tuple((e.code, e.message) for e in result.user_errors)
        if result.reservation is not None:
            decision = result.decision
            return Outcome(
                order_ref=ref,
                status=ROUTED,
                reservation_id=result.reservation.id,
                shipments=tuple(
                    (s.location_code, tuple((ln.sku_code, ln.quantity) for ln in s.lines))
                    for s in (decision.shipments if decision else ())
                ),
                reason=decision.reason if decision else "",
            )
        # short of stock is worth waiting for; anything else (bad input, unknown SKU) is not
        waiting = bool(errors) and all(code == "INSUFFICIENT_STOCK" for code, _ in errors)
        return Outcome(order_ref=ref, status=WAITING if waiting else REJECTED, errors=errors)

    def note_level(self, level: StockLevel) -> list[dict[str, Any]]:
        """Record a pushed stock level; returns the waiting orders it might now let through."""
        key = (level.sku_code, level.location_code)
        before = self.stock.get(key)
        now = level.available
        self.stock[key] = now
        if now <= 0 or (before is not None and now <= before):
            return []  # nothing became sellable here
        # an order being routed right now may be refused on the figures from before this change
        self._recheck.update(ref for ref, order in self._busy.items() if _wants(order, key[0]))
        return [order for ref, order in self.waiting.items() if ref not in self._busy and _wants(order, key[0])]

    async def watch_stock(self, ready: asyncio.Event | None = None) -> None:
        """Follow the locations' stock levels for ever; route again every waiting order they may unblock.
        `ready` is set once the snapshot of the current levels is in."""
        assert self._client is not None, "use `async with OrderRouter(...)`"
        async for level in self._client.watch_stock_levels(None, self.locations):
            if level is None:  # the snapshot of this (re)connection is complete
                if ready is not None:
                    ready.set()
                continue
            for order in self.note_level(level):
                await self.submit(order)

    async def run(self, orders: AsyncIterator[dict[str, Any]]) -> None:
        """Watch stock and route every order as it arrives; when the input ends, return once no order
        is waiting for stock any more."""
        watcher = asyncio.create_task(self.watch_stock())
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


def _order(order: dict[str, Any]) -> Order:
    destination = order.get("destination")
    return Order(
        order_ref=str(order["orderRef"]),
        lines=tuple(ReserveLine(ln["skuCode"], int(ln["quantity"]), ln.get("locationCode")) for ln in order["lines"]),
        channel_code=order.get("channelCode"),
        destination=(destination["latitude"], destination["longitude"]) if destination else None,
        cart_ref=order.get("cartRef"),
        ttl_seconds=order.get("ttlSeconds"),
        allow_split=order.get("allowSplit", True),
        idempotency_key=order.get("idempotencyKey"),
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("STOCKWIRE_URL", "http://localhost:8000/graphql"))
    parser.add_argument("--key", default=os.environ.get("STOCKWIRE_KEY"), help="API key (router scope)")
    parser.add_argument("--locations", required=True, help="comma-separated location codes to watch")
    parser.add_argument("--channel", help="default channelCode for orders that name none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    router = OrderRouter(
        url=args.url,
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
