"""A checkout service: hold stock when it goes in the cart, commit it at payment, release it on abandon.

    python clients/examples/checkout_service.py --url http://localhost:8000/graphql --key "$KEY" \\
        demo SKU-1 WH-1        # a cart that pays and a cart that is abandoned, one line per step

The key needs the `checkout` scope. `CheckoutService` is the part to copy: one reservation per cart,
replaced when the cart changes (the new hold first, so the shopper never loses units in between),
extended while the shopper is active, committed with the order number, released when the cart is
abandoned. A refusal (INSUFFICIENT_STOCK, RESERVATION_EXPIRED, ...) is a typed user error, shown to the shopper.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stockwire_client import ReservationResult, ReserveLine, StockwireClient, UserError


class CartRefused(Exception):
    def __init__(self, errors: tuple[UserError, ...]) -> None:
        super().__init__("; ".join(f"{e.code}: {e.message}" for e in errors))
        self.errors = errors


@dataclass
class CheckoutService:
    stockwire: StockwireClient
    hold_seconds: int = 900
    holds: dict[str, str] = field(default_factory=dict)  # cart -> reservation id

    async def set_cart(self, cart: str, lines: list[ReserveLine]) -> ReservationResult:
        """The cart now holds exactly these lines (or stays as it was, with the reason)."""
        held = await self.stockwire.checkout.reserve(lines, cart_ref=cart, ttl_seconds=self.hold_seconds)
        if not held.ok or held.reservation is None:
            raise CartRefused(held.user_errors)
        previous = self.holds.get(cart)
        self.holds[cart] = held.reservation.id
        if previous is not None:
            await self.stockwire.checkout.release(previous)
        return held

    async def still_shopping(self, cart: str) -> ReservationResult:
        return await self.stockwire.checkout.extend(self.holds[cart], self.hold_seconds)

    async def pay(self, cart: str, order_ref: str) -> ReservationResult:
        """Payment captured: the held units become the order's (committed)."""
        done = await self.stockwire.checkout.commit(self.holds[cart], order_ref)
        if not done.ok:
            raise CartRefused(done.user_errors)  # e.g. RESERVATION_EXPIRED: reserve again before charging
        del self.holds[cart]
        return done

    async def abandon(self, cart: str) -> ReservationResult:
        return await self.stockwire.checkout.release(self.holds.pop(cart))


async def demo(url: str, key: str | None, sku: str) -> None:
    async with StockwireClient(url, api_key=key) as stockwire:
        service = CheckoutService(stockwire)
        await service.set_cart("cart-paid", [ReserveLine(sku, 1)])
        held = await service.set_cart("cart-paid", [ReserveLine(sku, 2)])  # the shopper adds one more
        assert held.reservation is not None
        print(f"HELD      cart-paid {sku} x2 until {held.reservation.expires_at.isoformat()}", flush=True)
        await service.set_cart("cart-abandoned", [ReserveLine(sku, 1)])
        print(f"HELD      cart-abandoned {sku} x1", flush=True)
        try:
            await service.set_cart("cart-greedy", [ReserveLine(sku, 100)])
        except CartRefused as refused:
            print(f"REFUSED   cart-greedy {refused.errors[0].code}", flush=True)
        await service.still_shopping("cart-paid")
        paid = await service.pay("cart-paid", "SO-1001")
        assert paid.reservation is not None
        print(f"COMMITTED cart-paid order SO-1001 {paid.reservation.status}", flush=True)
        released = await service.abandon("cart-abandoned")
        assert released.reservation is not None
        print(f"RELEASED  cart-abandoned {released.reservation.status}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("STOCKWIRE_URL", "http://localhost:8000/graphql"))
    parser.add_argument("--key", default=os.environ.get("STOCKWIRE_KEY"), help="API key (checkout scope)")
    parser.add_argument("command", choices=["demo"])
    parser.add_argument("sku")
    args = parser.parse_args()
    asyncio.run(demo(args.url, args.key, args.sku))


if __name__ == "__main__":
    main()
