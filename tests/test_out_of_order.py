"""Late events: a count at T and deltas before and after it, arriving in any order, converge to one position."""

from __future__ import annotations

import random
from typing import Any

from app.services import integrity
from tests.conftest import Api
from tests.helpers import UPSERT_SKUS, catalogue, event, level, record

# minutes relative to T = 09:00; the count at T says 40 on hand
HISTORY: list[tuple[str, int, float]] = [
    ("RECEIVED", 50, -10),  # before T: replaced by the count
    ("ORDER_PLACED", 4, -8),  # before T: not an on-hand effect, so it still applies
    ("SOLD", 3, -5),  # before T: replaced
    ("ADJUSTED", -2, -2),  # before T: replaced
    ("COUNTED", 40, 0),
    ("SOLD", 2, 5),  # after T: on top of the count
    ("RECEIVED", 7, 10),
    ("ADJUSTED", -1, 20),
]
EXPECTED_ON_HAND = 40 - 2 + 7 - 1


def _orders() -> list[list[int]]:
    rng = random.Random(20260101)
    orders = [list(range(len(HISTORY))), list(reversed(range(len(HISTORY))))]
    while len(orders) < 8:
        order = list(range(len(HISTORY)))
        rng.shuffle(order)
        orders.append(order)
    return orders


async def test_shuffled_arrival_always_converges_to_the_same_position(api: Api) -> None:
    await catalogue(api, skus=[])
    orders = _orders()
    data = await api.ok(UPSERT_SKUS, input=[{"code": f"SKU-{n}", "name": "x"} for n in range(len(orders))])
    assert data["upsertSkus"]["userErrors"] == []
    finals: list[tuple[int, int]] = []
    for n, order in enumerate(orders):
        sku = f"SKU-{n}"
        events: list[dict[str, Any]] = [event(t, sku, "WH-1", q, minutes) for t, q, minutes in HISTORY]
        count_arrived = False
        for i in order:
            result = await record(api, events[i])
            assert result["userErrors"] == [], result
            status = result["results"][0]["status"]
            kind, _, minutes = HISTORY[i]
            if kind == "COUNTED":
                count_arrived = True
            # an on-hand delta from before T that arrives after the count is recorded, not applied
            late = count_arrived and minutes < 0 and kind != "ORDER_PLACED"
            assert status == ("SUPERSEDED" if late else "APPLIED"), (order, i, status)
        row = await level(api, sku, "WH-1")
        finals.append((row["onHand"], row["committed"]))
    assert finals == [(EXPECTED_ON_HAND, 4)] * len(orders)
    assert await integrity.check(api.ctx) == []
