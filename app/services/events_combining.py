"""Combining recorded batches: concurrent recordInventoryEvents calls applied in one transaction (issue 15, target 5).

Why: an integration's batches hit positions spread over the catalogue, so two concurrent batches nearly
always share some, and the later one waits on the earlier one's row locks until it commits. Batches then
queue in Postgres one whole transaction after another: lock, decide, write, commit, with the event
loop's turns between them on everyone's path. Here the batches that arrive while one is in flight (in
this process, under one database, tenant and API key) queue in arrival order, and when it holds its row
locks the queue becomes the next transaction, up to `Settings.combine_events` events: one look-up, one
lock statement, one write and one commit for all of them (app/services/lanes.py queues them). A batch
that finds nothing in flight runs at once, alone.

Every promise of a batch alone holds (`events.apply_batches` runs both):
- a batch's answer is the one it would get alone, run after the batches that arrived before it: its
  events are decided in turn after theirs, against the positions as those left them;
- atomic: a refused batch (any error) changes nothing and the others still apply. Refused before the
  locks (validation, unknown codes, conflicts), it is left out; refused in them (a figure out of
  range), the transaction is rolled back and runs again without it;
- each event applied once: two batches sharing a (source, externalId) never share a transaction; the
  later one, and those behind it (arrival order), wait for the next, where it finds the first recorded
  (DUPLICATE, or EVENT_CONFLICT) as a repeat does;
- gapless versions and one ledger row per applied event: the same code writes them.
The transaction runs with the first batch's context (clock, tenant, the key its ledger rows name): the
lane is per (database, tenant, system mode, API key), so the batches share those.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from app.db import tenancy
from app.domain.errors import Refused, UserError
from app.services.context import Ctx
from app.services.events import Batch, EventResult, Outcome, apply_batches
from app.services.lanes import Lanes


@dataclass(eq=False, slots=True)
class _Member:
    ctx: Ctx
    batch: Batch
    keys: set[tuple[str, str]]
    future: asyncio.Future[tuple[list[EventResult], list[UserError]]]


async def record(ctx: Ctx, batch: Batch) -> tuple[list[EventResult], list[UserError]]:
    """The batch's results and errors, applied alone or with the batches queued beside it; raises its
    Refused."""

    async def alone() -> tuple[list[EventResult], list[UserError]]:
        return _answer((await apply_batches(ctx, [batch]))[0])

    if ctx.settings.combine_events == 0:
        return await alone()
    key = (id(ctx.db), tenancy.current(), tenancy.in_system_mode(), ctx.actor.key_id)
    return await _lanes.submit(key, lambda future: _Member(ctx, batch, batch.keys(), future), alone)


def _answer(outcome: Outcome) -> tuple[list[EventResult], list[UserError]]:
    if isinstance(outcome, Refused):
        raise outcome
    return outcome


def _take(queue: deque[_Member]) -> list[_Member]:
    """Members from the front of the queue, in arrival order, up to `Settings.combine_events` events (at
    least one member); it stops before a member sharing a (source, externalId) with one taken."""
    limit = queue[0].ctx.settings.combine_events
    taken: list[_Member] = []
    keys: set[tuple[str, str]] = set()
    size = 0
    while queue:
        member = queue[0]
        if member.future.done():  # cancelled: its client went away before its turn
            queue.popleft()
            continue
        if taken and (size + len(member.batch.events) > limit or not keys.isdisjoint(member.keys)):
            break
        queue.popleft()
        taken.append(member)
        keys |= member.keys
        size += len(member.batch.events)
    return taken


async def _run(members: list[_Member], locked: asyncio.Event) -> list[Outcome]:
    return await apply_batches(members[0].ctx, [m.batch for m in members], locked.set)


_lanes: Lanes[_Member, tuple[list[EventResult], list[UserError]]] = Lanes(
    _take, _run, lambda member: member.ctx.settings.combine_in_flight
)
