"""A storefront that shows live availability for a few SKUs and prints every change.

    python clients/storefront.py --url ws://localhost:8000/graphql --key "$STOCKWIRE_KEY" SKU-1 SKU-2
    python clients/storefront.py --channel web SKU-1        # as the "web" channel's rules see it

The key needs the `storefront` scope (`stockwire keys create --scopes storefront`). The first lines
are the current state; after that one line per change. Stop it with Ctrl-C; if the server restarts
or the network drops, it reconnects by itself and carries on from the versions it has shown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stockwire_client import SubscriptionError, availability_changes


def describe(availability: dict[str, Any], previous: dict[str, Any] | None) -> str:
    sku, available = availability["skuCode"], availability["available"]
    where = ", ".join(f"{lv['locationCode']}={lv['available']}" for lv in availability["locations"]) or "nowhere"
    if previous is None:
        change = "now"
    else:
        delta = available - previous["available"]
        change = f"{delta:+d}" if delta else "same figure"
    badge = "IN STOCK" if available > 0 else "SOLD OUT"
    return f"{sku:<16} {badge:<9} {available:>6}  ({change}; {where}; version {availability['version']})"


async def run(url: str, skus: list[str], channel: str | None, key: str | None) -> None:
    shown: dict[str, dict[str, Any]] = {}
    async for availability in availability_changes(url, skus, channel, api_key=key):
        print(describe(availability, shown.get(availability["skuCode"])), flush=True)
        shown[availability["skuCode"]] = availability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("skus", nargs="+", help="SKU codes to watch")
    parser.add_argument("--url", default=os.environ.get("STOCKWIRE_WS_URL", "ws://localhost:8000/graphql"))
    parser.add_argument("--key", default=os.environ.get("STOCKWIRE_KEY"), help="API key (storefront scope)")
    parser.add_argument("--channel", help="show the figure this channel may sell")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(run(args.url, args.skus, args.channel, args.key))
        except SubscriptionError as exc:
            sys.exit(f"stockwire refused the subscription: {exc}")


if __name__ == "__main__":
    main()
