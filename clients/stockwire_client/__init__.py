"""Stockwire's Python client (async, typed, on gql): live availability, checkout holds, order routing.

    async with StockwireClient("http://localhost:8000/graphql", api_key=KEY) as stockwire:
        async for event in stockwire.watch_availability(["SKU-1"], channel="web"):
            ...  # Availability per SKU (newer versions only), SnapshotComplete after each (re)sync
        held = await stockwire.checkout.reserve([ReserveLine("SKU-1", 2)], cart_ref="cart-7")
        decision = await stockwire.router.route_order(Order("SO-1", (ReserveLine("SKU-1", 2),)))

Install what it needs with `pip install -e ".[client]"`. Operations are the trusted documents in
clients/operations (sent by hash). Checkout and routing calls are retried on lost requests and 5xx
answers with the same idempotency key, so a retry never holds twice.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from .connection import Connection, Retry, StockwireError, Unreachable
from .live import Feed, LiveOptions, Resumable, SubscriptionError
from .types import (
    Availability,
    Order,
    ReservationResult,
    ReserveLine,
    RouteAndReserveResult,
    RoutingDecision,
    SnapshotComplete,
    StockLevel,
    UserError,
)

__all__ = [
    "Availability",
    "Checkout",
    "LiveOptions",
    "Order",
    "ReservationResult",
    "ReserveLine",
    "Retry",
    "RouteAndReserveResult",
    "Router",
    "RoutingDecision",
    "SnapshotComplete",
    "StockLevel",
    "StockwireClient",
    "StockwireError",
    "SubscriptionError",
    "Unreachable",
    "UserError",
    "availability_feed",
    "stock_level_feed",
]


def ws_url_of(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http") if http_url.startswith("http") else http_url


def availability_feed(skus: list[str], channel: str | None = None) -> Feed[Availability]:
    return Feed(
        subscription="AvailabilityChanged",
        snapshot="Availability",
        variables={"skus": skus, "channel": channel},
        parse=Availability.of,
        key_of=lambda a: a.sku_code,
        version_of=lambda a: a.version,
    )


def stock_level_feed(skus: list[str] | None = None, locations: list[str] | None = None) -> Feed[StockLevel]:
    return Feed(
        subscription="StockLevelChanged",
        snapshot="StockLevels",
        variables={"skus": skus, "locations": locations},
        parse=StockLevel.of,
        key_of=lambda s: f"{s.sku_code}\x1f{s.location_code}",
        version_of=lambda s: s.version,
    )


@dataclass
class AvailabilityWatch:
    """`async for` it: Availability (per SKU, versions strictly increasing) and SnapshotComplete markers.
    `latest` holds the newest state of every SKU seen."""

    stream: Resumable[Availability]
    latest: dict[str, Availability] = field(default_factory=dict)

    async def __aiter__(self) -> AsyncIterator[Availability | SnapshotComplete]:
        synced = False
        async for item in self.stream:
            if item is None:
                yield SnapshotComplete(resync=synced)
                synced = True
            else:
                self.latest[item.sku_code] = item
                yield item

    @property
    def reconnects(self) -> int:
        return self.stream.reconnects

    @property
    def refusals(self) -> int:
        """Times the server refused the subscription for now (UNAVAILABLE) and it was sent again."""
        return self.stream.refusals


@dataclass
class Checkout:
    """Holds for a checkout (key scope `checkout`). Every call answers with typed `user_errors` when
    nothing changed (INSUFFICIENT_STOCK, RESERVATION_EXPIRED, ...); GraphQL errors raise StockwireError."""

    connection: Connection

    async def reserve(
        self,
        lines: Iterable[ReserveLine],
        *,
        cart_ref: str | None = None,
        channel: str | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> ReservationResult:
        """Hold every line or none. One idempotency key per call (generated unless given), reused by every
        retry, so a request whose answer was lost holds once however often it is sent again."""
        payload = {
            "lines": [line.as_input() for line in lines],
            "idempotencyKey": idempotency_key or f"py-{uuid.uuid4()}",
            "cartRef": cart_ref,
            "channelCode": channel,
            "ttlSeconds": ttl_seconds,
        }
        data = await self.connection.call("Reserve", {"input": payload})
        return ReservationResult.of(data["reserve"])

    async def commit(self, reservation_id: str, order_ref: str) -> ReservationResult:
        data = await self.connection.call("CommitReservation", {"id": reservation_id, "orderRef": order_ref})
        return ReservationResult.of(data["commitReservation"])

    async def release(self, reservation_id: str) -> ReservationResult:
        data = await self.connection.call("ReleaseReservation", {"id": reservation_id})
        return ReservationResult.of(data["releaseReservation"])

    async def extend(self, reservation_id: str, ttl_seconds: int) -> ReservationResult:
        data = await self.connection.call("ExtendReservation", {"id": reservation_id, "ttlSeconds": ttl_seconds})
        return ReservationResult.of(data["extendReservation"])


@dataclass
class Router:
    """Order routing (key scope `router`; route_and_reserve also `checkout`)."""

    connection: Connection

    async def route_order(self, order: Order) -> RoutingDecision:
        """The decision, dry: nothing held, nothing stored."""
        data = await self.connection.call("RouteOrder", {"input": order.as_input()})
        return RoutingDecision.of(data["routeOrder"])

    async def route_and_reserve(self, order: Order) -> RouteAndReserveResult:
        """The decision with the stock held; idempotent by `idempotency_key` (default the order_ref)."""
        data = await self.connection.call("RouteAndReserve", {"input": order.as_input()})
        return RouteAndReserveResult.of(data["routeAndReserve"])


@dataclass
class StockwireClient:
    """One service's connection to Stockwire: `url` is the HTTP endpoint (…/graphql); websockets go
    to the same path. `by_hash=False` sends every document's text (a server without the manifest)."""

    url: str
    api_key: str | None = None
    by_hash: bool = True
    retry: Retry = field(default_factory=Retry)
    live: LiveOptions = field(default_factory=LiveOptions)
    connection: Connection = field(init=False)
    checkout: Checkout = field(init=False)
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.connection = Connection(self.url, self.api_key, by_hash=self.by_hash, retry=self.retry)
        self.checkout = Checkout(self.connection)
        self.router = Router(self.connection)

    async def __aenter__(self) -> StockwireClient:
        await self.connection.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.connection.__aexit__(kind, exc, tb)

    def watch_availability(self, skus: list[str], *, channel: str | None = None) -> AvailabilityWatch:
        """Latest availability per SKU, across reconnects (needs no `async with`)."""
        stream = Resumable(ws_url_of(self.url), availability_feed(skus, channel), self.api_key, self.live)
        return AvailabilityWatch(stream)

    def watch_stock_levels(
        self, skus: list[str] | None = None, locations: list[str] | None = None
    ) -> Resumable[StockLevel]:
        """Per-location stock across reconnects; None marks a complete snapshot (key scope `router`)."""
        return Resumable(ws_url_of(self.url), stock_level_feed(skus, locations), self.api_key, self.live)
