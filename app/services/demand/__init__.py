"""Demand, sync lag and the dynamic buffer, kept current where they change (app.domain.demand does the math).

- Sales velocity: `note_sales` adds a sale's units to `sku_demand` (one upsert, in the sale's own
  transaction: reserve, routeAndReserve, SOLD and ORDER_PLACED events). A reservation counts once, when
  it is made: its commit is the same demand, and a release does not undo that units left the figure
  for a while. Readers decay the stored count with the clock, so nothing scans the ledger.
- Sync lag: `note_push` turns a push and its acknowledgement into a sample (from the first attempt of a
  push that failed, so an endpoint that was down counts as slow), kept as an EWMA per channel.
- The dynamic buffer applied per (channel, SKU) lives in `dynamic_buffers`. It moves with hysteresis
  (`demand.settle`) in the transactions that change its inputs (a sale, a lag sample, a rule change),
  and when decay alone lowers its target (`review_due`, run by the expiry sweeper at each row's
  `review_at`). Each move bumps the row's version (part of the channel's Availability.version) and
  queues the SKU for publication, so the figure never changes without its version and its push.

Lock order: these rows are taken after any stock rows of the transaction, in (channel, SKU) order.

One module per job: `velocity` (decayed sales counts), `recording` (sales and lag samples, in their
transactions), `buffers` (the dynamic buffer, and `channel_demand` for the API), `preorders`.
"""

from __future__ import annotations

from app.services.demand.buffers import (
    REVIEW_BATCH,
    DemandView,
    applied_buffers,
    channel_demand,
    refresh_buffers,
    review_due,
    rule_of,
)
from app.services.demand.preorders import LaunchInput, give_back_preorders, set_launches, take_preorders
from app.services.demand.recording import ledger_sales, note_push, note_reserved, note_sales
from app.services.demand.velocity import half_life_seconds, velocities

__all__ = [
    "REVIEW_BATCH",
    "DemandView",
    "LaunchInput",
    "applied_buffers",
    "channel_demand",
    "give_back_preorders",
    "half_life_seconds",
    "ledger_sales",
    "note_push",
    "note_reserved",
    "note_sales",
    "refresh_buffers",
    "review_due",
    "rule_of",
    "set_launches",
    "take_preorders",
    "velocities",
]
