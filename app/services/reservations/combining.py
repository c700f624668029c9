"""Combining: a hot position's checkouts held in one transaction each batch (issue 15, target 2).

Why: in a flash sale every buyer wants the same SKU at the same location. One transaction per
reserve queues them all on that stock_levels row's lock, so the position takes at most one hold per
lock-hold-and-commit, however fast the rest of the service is. Here concurrent holds on one position
(in this process) queue in arrival order behind the one batch in flight; when it commits, the queue
(up to `Settings.combine_holds`) becomes the next batch, one transaction: one row lock, one UPDATE,
one commit for all of them. An idle or spread load pays nothing extra: a reserve that finds no batch
in flight for its position runs at once, as a batch of one.

Which requests: the usual checkout, one line at a named location, no channel and no B2B account
(`applies`). Everything else, and whatever a batch cannot answer itself (an idempotency key already
taken, an unknown or inactive SKU or location, a position that does not exist), goes the ordinary
way (`reserve` returns None), so those answers stay the ordinary path's.

Every promise of the ordinary path holds, per request:
- all or nothing: a request is one line, held in full or refused; a refused request's reservation
  row is deleted in the batch, so a refused attempt is not remembered (as a rolled-back one is not);
- no oversell, by construction: the batch's one UPDATE keeps the condition `available >= units` (for
  the accepted total), under the row lock the batch took to decide;
- idempotency: the keys are claimed in one INSERT ... ON CONFLICT DO NOTHING before anything is held;
  a taken key goes the ordinary way and is answered as a repeat. Two requests with one key never share
  a batch: the later one waits for the next batch, so it sees the first one's outcome as a repeat does;
- arrival order (FIFO, no buyer starves): the queue is served in order, and `domain.combining.decide`
  judges each request against what the earlier accepted ones left, as one-by-one holds would;
- a refusal says the exact shortfall: the units available at its turn (what a one-by-one run in arrival
  order would have said);
- gapless versions: the UPDATE bumps the version by the number of holds, one RESERVED ledger row per
  hold with consecutive versions in arrival order.
An error in a batch (after `Database.write`'s deadlock retries) fails every member with it; a member
whose client went away (its task cancelled) leaves the batch running for the others: batches run in a
task of their own, never in a caller's.

Batches run with the first member's context (tenant, the key that ledger rows name): the queue of a
position is per (database, tenant, system mode, API key, SKU, location), so members share those.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import literal_column
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, stock, tenancy
from app.db.engine import note_changed
from app.domain.combining import Verdict, accepted_units, decide
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import ReservationStatus
from app.services import demand
from app.services.context import Ctx
from app.services.reservations.expiry import expire_due
from app.services.reservations.records import reserved_row
from app.services.views import ReservationLineView, ReservationView

if TYPE_CHECKING:
    from app.services.reservations.reserving import ReserveRequest


# --- statements (asyncpg, prepared once per connection: app/db/pg.py says why) ---------------------

# the SKU and location, and whether a hold on the SKU is past its expiry (then, and only then, the batch
# reclaims expired holds with the locking expire_due: the same non-locking check as pg.open_reservation)
_RESOLVE = (
    "SELECT (SELECT id FROM skus WHERE code = $1 AND active), (SELECT id FROM locations WHERE code = $2 AND active), "
    "EXISTS (SELECT 1 FROM reservations r WHERE r.status = 'ACTIVE' AND r.expires_at <= $3 AND r.id IN "
    "(SELECT rl.reservation_id FROM reservation_lines rl JOIN skus s ON s.id = rl.sku_id WHERE s.code = $1))"
)
# every key of the batch in one statement; a key taken (now or by a transaction still running, which
# this waits for on the unique index) gives no row back
_CLAIM = (
    "INSERT INTO reservations (id, status, idempotency_scope, idempotency_key, fingerprint, channel_code, "
    "cart_ref, created_at, updated_at, expires_at, owner_key_id, account_code) "
    "SELECT id, $1, scope, key, fp, NULL, cart, $2, $2, exp, owner, NULL FROM unnest("
    "$3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[], $7::varchar[], $8::timestamp[], $9::varchar[]"
    ") AS t(id, scope, key, fp, cart, exp, owner) "
    "ON CONFLICT (tenant_id, idempotency_scope, idempotency_key) DO NOTHING RETURNING id"
)
_AVAILABLE = str(stock.available_sql().compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
_LOCK = f"SELECT {_AVAILABLE} AS available, version FROM stock_levels WHERE sku_id = $1 AND location_id = $2 FOR UPDATE"
# the batch's one hold: the accepted total, still under the hold condition (by construction, not by
# trusting the decision), the version bumped once per hold so each gets its own ledger row
# with, only when it took the units, the accepted members' lines and the position's outbox row: one round
# trip inside the row lock instead of three (each one a wait every queued buyer shares)
_HOLD = (
    "WITH h AS (UPDATE stock_levels SET reserved = reserved + $3, version = version + $4, updated_at = $5 "
    "WHERE sku_id = $1 AND location_id = $2 AND "
    f"{stock.can_hold(literal_column('$3')).compile(dialect=postgresql.dialect())} RETURNING version), "  # type: ignore[no-untyped-call]
    "line AS (INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity, backordered, "
    "backorder_open, preordered) SELECT r, $1, $2, q, 0, 0, 0 FROM h, unnest($6::varchar[], $7::bigint[]) AS t(r, q)), "
    "box AS (INSERT INTO outbox (sku_id, location_id, created_at) SELECT $1, $2, $5 FROM h) "
    "SELECT version FROM h"
)
_FORGET = "DELETE FROM reservations WHERE id = ANY($1::varchar[])"


# --- the queue per position ---------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Waiter:
    ctx: Ctx
    req: ReserveRequest
    ttl: int
    fingerprint: str
    # its ReservationView; None: go the ordinary way; or the Refused / error of its batch
    future: asyncio.Future[ReservationView | None]

    @property
    def quantity(self) -> int:
        return self.req.lines[0].quantity

    @property
    def key(self) -> tuple[str, str]:
        return (self.req.idempotency_scope, self.req.idempotency_key)


@dataclass(eq=False, slots=True)
class _Lane:
    queue: deque[_Waiter] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    # a reserve that found the position idle is running the ordinary path (the caller's own task)
    solo: bool = False


_LaneKey = tuple[int, int, int | None, bool, str | None, str, str]
_lanes: dict[_LaneKey, _Lane] = {}


def applies(ctx: Ctx, req: ReserveRequest) -> bool:
    """A request this path takes: one line at a named location, no channel, no account (the checkout)."""
    return (
        ctx.settings.combine_holds > 0
        and len(req.lines) == 1
        and req.lines[0].location_code is not None
        and req.channel_code is None
        and req.account_code is None
        and not req.allow_partial
    )


async def reserve(
    ctx: Ctx,
    req: ReserveRequest,
    ttl: int,
    fingerprint: str,
    ordinary: Callable[[], Awaitable[ReservationView]],
) -> ReservationView | None:
    """Hold the request's one line: at once by `ordinary` (the one-transaction checkout) when nothing is
    in flight for its position, else in the next batch of its position. Raises Refused like the ordinary
    path; None when the ordinary path must answer it (see the module docstring). `req` is validated.

    Why the idle case takes the ordinary path: it is a few round trips shorter than a batch (one
    statement claims, looks up and checks expiry; one holds and writes), so a spread load pays nothing
    for combining; only requests that arrive while a hold on the same position is in flight queue."""
    line = req.lines[0]
    assert line.location_code is not None
    loop = asyncio.get_running_loop()
    key: _LaneKey = (
        id(loop),
        id(ctx.db),
        tenancy.current(),
        tenancy.in_system_mode(),
        ctx.actor.key_id,
        line.sku_code,
        line.location_code,
    )
    lane = _lanes.get(key)
    if lane is None:
        lane = _lanes[key] = _Lane(solo=True)
        try:
            return await ordinary()
        finally:
            # the queue that formed meanwhile becomes the first batch (also when this caller was cancelled)
            lane.solo = False
            if lane.queue and lane.task is None:
                lane.task = asyncio.create_task(_drain(key, lane))
            elif not lane.queue and lane.task is None and _lanes.get(key) is lane:
                del _lanes[key]
    future: asyncio.Future[ReservationView | None] = loop.create_future()
    lane.queue.append(_Waiter(ctx, req, ttl, fingerprint, future))
    if lane.task is None and not lane.solo:
        # a task of its own: a caller cancelled mid-batch must not cancel the others' transaction
        lane.task = asyncio.create_task(_drain(key, lane))
    return await future


def _next_batch(queue: deque[_Waiter], size: int) -> list[_Waiter]:
    """Up to `size` waiters from the front of the queue, in arrival order, skipping those whose caller
    is gone; a second request with a key already in the batch stays at the front for the next one."""
    batch: list[_Waiter] = []
    keys: set[tuple[str, str]] = set()
    later: list[_Waiter] = []
    while queue and len(batch) < size:
        waiter = queue.popleft()
        if waiter.future.done():  # cancelled: its client went away before its turn
            continue
        if waiter.key in keys:
            later.append(waiter)
            continue
        keys.add(waiter.key)
        batch.append(waiter)
    queue.extendleft(reversed(later))
    return batch


async def _drain(key: _LaneKey, lane: _Lane) -> None:
    """Run the position's batches until its queue is empty and none is in flight, then forget the lane.

    With `Settings.combine_in_flight` 2, two batches may be in flight: the next one starts once the
    previous one holds the row lock, so it does its work before the lock (claiming keys, expiry)
    meanwhile and then waits on the lock, which
    the database grants it only after the previous one commits: batches still lock, decide and commit
    in arrival order, and the row lock is never idle between them."""
    previous: asyncio.Task[None] | None = None
    try:
        while lane.queue or previous is not None:
            if not lane.queue:
                assert previous is not None
                await asyncio.shield(previous)
                previous = None
                continue
            batch = _next_batch(lane.queue, lane.queue[0].ctx.settings.combine_holds)
            if not batch:
                continue
            locked = asyncio.Event()
            current = asyncio.create_task(_serve(batch, locked))
            if batch[0].ctx.settings.combine_in_flight < 2:
                await asyncio.shield(current)  # one at a time: the next batch starts after this one's commit
                continue
            waiting = asyncio.create_task(locked.wait())
            try:
                await asyncio.wait((current, waiting), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if previous is not None:
                await asyncio.shield(previous)  # at most two in flight
            previous = current
    finally:
        # also when this task itself is cancelled (the loop shutting down): nobody is left waiting (a
        # batch already started answers its members from its own task)
        for waiter in lane.queue:
            if not waiter.future.done():
                waiter.future.cancel()
        lane.queue.clear()
        lane.task = None
        if _lanes.get(key) is lane:
            del _lanes[key]


async def _serve(batch: Sequence[_Waiter], locked: asyncio.Event) -> None:
    """One batch, its answers given to its members; never raises (each member gets the batch's error)."""
    try:
        answers = await _run_batch(batch, locked)
    except BaseException as exc:  # every member gets the batch's error, none is left waiting
        for waiter in batch:
            if not waiter.future.done():
                if isinstance(exc, Exception):
                    waiter.future.set_exception(exc)
                else:
                    waiter.future.cancel()
        if not isinstance(exc, Exception):
            raise  # this task cancelled (the loop shutting down)
        return
    finally:
        locked.set()  # the next batch may start (also when this one ended before taking the lock)
    for waiter, answer in zip(batch, answers, strict=True):
        if waiter.future.done():
            continue
        if isinstance(answer, Refused):
            waiter.future.set_exception(answer)
        else:
            waiter.future.set_result(answer)


# --- one batch, one transaction ---------------------------------------------------------------------


Answer = ReservationView | Refused | None


async def _run_batch(batch: Sequence[_Waiter], locked: asyncio.Event) -> list[Answer]:
    ctx = batch[0].ctx
    line = batch[0].req.lines[0]
    assert line.location_code is not None
    sku_code, location_code = line.sku_code, line.location_code

    async def work(conn: AsyncConnection) -> list[Answer]:
        now = ctx.clock()
        db = await pg.driver(conn)
        sku_id, location_id, due = await pg.run(db.fetchrow, _RESOLVE, sku_code, location_code, pg.naive(now))
        if sku_id is None or location_id is None:
            return [None] * len(batch)  # the ordinary path says what is wrong, as it always has
        rids = [str(uuid.uuid4()) for _ in batch]
        expires = [now + timedelta(seconds=w.ttl) for w in batch]
        claimed = {
            r["id"]
            for r in await pg.run(
                db.fetch,
                _CLAIM,
                ReservationStatus.ACTIVE.value,
                pg.naive(now),
                rids,
                [w.req.idempotency_scope for w in batch],
                [w.req.idempotency_key for w in batch],
                [w.fingerprint for w in batch],
                [w.req.cart_ref for w in batch],
                [pg.naive(e) for e in expires],
                [w.ctx.actor.key_id for w in batch],
            )
        }
        mine = [i for i, rid in enumerate(rids) if rid in claimed]  # the others: repeats, answered the usual way
        if not mine:
            return [None] * len(batch)
        # holds past their expiry never block a new reservation (as in the ordinary path)
        if due:
            await expire_due(conn, now, sku_ids=[sku_id], wait=True)
        row = await pg.run(db.fetchrow, _LOCK, sku_id, location_id)
        locked.set()  # the next batch may start its work before the lock
        if row is None:  # no position yet: the ordinary path refuses it with its own message
            await pg.run(db.execute, _FORGET, [rids[i] for i in mine])
            return [None] * len(batch)
        quantities = [batch[i].quantity for i in mine]
        verdicts = decide(int(row["available"]), quantities)
        taken = accepted_units(verdicts, quantities)
        accepted = [i for i, v in zip(mine, verdicts, strict=True) if v.accepted]
        refused = [rids[i] for i, v in zip(mine, verdicts, strict=True) if not v.accepted]
        if refused:  # a refused attempt is not remembered: its key stays free
            await pg.run(db.execute, _FORGET, refused)
        if accepted:
            version = await pg.run(
                db.fetchval,
                _HOLD,
                sku_id,
                location_id,
                taken,
                len(accepted),
                pg.naive(now),
                [rids[i] for i in accepted],
                [batch[i].quantity for i in accepted],
            )
            if version is None:  # cannot happen under the lock taken above; never hold past the condition
                raise RuntimeError(f"combined hold of {taken} units at ({sku_id}, {location_id}) refused")
            first = int(version) - len(accepted) + 1
            pair = (sku_id, location_id)
            await stock.write_ledger(
                conn,
                [
                    reserved_row(pair, batch[i].quantity, first + n, now, rids[i], batch[i].req.cart_ref)
                    for n, i in enumerate(accepted)
                ],
            )
            note_changed([pair])  # the relay's hint (its outbox row went in with the hold)
            # issue 18: sales velocity; one note of the total equals one per hold (same instant)
            await demand.note_reserved(conn, now, "", {sku_id: taken}, "")
        verdict_of = dict(zip(mine, verdicts, strict=True))
        answers: list[Answer] = []
        for i, waiter in enumerate(batch):
            v = verdict_of.get(i)
            if v is None:
                answers.append(None)
            elif v.accepted:
                answers.append(_view(waiter.req, rids[i], now, expires[i], sku_code, location_code))
            else:
                answers.append(_refusal(waiter.quantity, v, sku_code, location_code))
        return answers

    return await ctx.db.write(work)


def _view(
    req: ReserveRequest, rid: str, now: datetime, expires_at: datetime, sku_code: str, location_code: str
) -> ReservationView:
    """The new reservation as load_views would read it back (what the ordinary path answers)."""
    return ReservationView(
        id=rid,
        status=ReservationStatus.ACTIVE,
        expires_at=expires_at,
        created_at=now,
        cart_ref=req.cart_ref,
        order_ref=None,
        channel_code=None,
        lines=(ReservationLineView(sku_code, location_code, req.lines[0].quantity, 0, None),),
    )


def _refusal(quantity: int, verdict: Verdict, sku_code: str, location_code: str) -> Refused:
    """The ordinary path's INSUFFICIENT_STOCK, with the units available at this request's turn."""
    message = f"{sku_code}: {quantity} requested at {location_code}, {verdict.available} available"
    return Refused([UserError(ErrorCode.INSUFFICIENT_STOCK, message, ("lines", sku_code))])
