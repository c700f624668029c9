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
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
from sqlalchemy import literal_column
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, stock, tenancy
from app.db.engine import note_changed
from app.domain.combining import Verdict, decide
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

# per member, its SKU and location ids (NULL: unknown or inactive) and whether a hold on that SKU is past
# its expiry (then, and only then, the batch reclaims expired holds with the locking expire_due: the same
# non-locking check as pg.open_reservation), in the order given
_RESOLVE = (
    "SELECT s.id, l.id, EXISTS (SELECT 1 FROM reservations r WHERE r.status = 'ACTIVE' AND r.expires_at <= $3 "
    "AND r.id IN (SELECT rl.reservation_id FROM reservation_lines rl WHERE rl.sku_id = s.id)) "
    "FROM unnest($1::varchar[], $2::varchar[]) WITH ORDINALITY AS t(sku, loc, n) "
    "LEFT JOIN skus s ON s.code = t.sku AND s.active LEFT JOIN locations l ON l.code = t.loc AND l.active "
    "ORDER BY t.n"
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
# the batch's positions locked in primary-key order (the locks are taken above the sort, so in that
# order): two batches, or a batch and a multi-line checkout, never wait on each other in a cycle
_LOCK = (
    f"SELECT sku_id, location_id, {_AVAILABLE} AS available FROM stock_levels "
    "WHERE (sku_id, location_id) IN (SELECT * FROM unnest($1::int[], $2::int[])) "
    "ORDER BY sku_id, location_id FOR UPDATE"
)
# the batch's holds, one UPDATE for all its positions: each position's accepted total, still under the
# hold condition (by construction, not by trusting the decision), its version bumped once per hold so
# each gets its own ledger row; with, for the positions that took their units, the accepted members'
# lines and the positions' outbox rows: one round trip inside the row locks instead of three (each one a
# wait every queued buyer shares)
_HOLD = (
    "WITH v AS (SELECT * FROM unnest($1::int[], $2::int[], $3::bigint[], $4::int[]) AS v(sku, loc, units, holds)), "
    "h AS (UPDATE stock_levels SET reserved = reserved + v.units, version = version + v.holds, updated_at = $5 "
    "FROM v WHERE sku_id = v.sku AND location_id = v.loc AND "
    f"{stock.can_hold(literal_column('v.units')).compile(dialect=postgresql.dialect())} "  # type: ignore[no-untyped-call]
    "RETURNING sku_id, location_id, version), "
    "line AS (INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity, backordered, "
    "backorder_open, preordered) SELECT t.r, t.sku, t.loc, t.q, 0, 0, 0 FROM h JOIN "
    "unnest($6::varchar[], $7::int[], $8::int[], $9::bigint[]) AS t(r, sku, loc, q) "
    "ON t.sku = h.sku_id AND t.loc = h.location_id), "
    "box AS (INSERT INTO outbox (sku_id, location_id, created_at) SELECT sku_id, location_id, $5 FROM h) "
    "SELECT sku_id, location_id, version FROM h"
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


_LaneKey = tuple[int, int, int | None, bool, str | None]
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
    key: _LaneKey = (id(loop), id(ctx.db), tenancy.current(), tenancy.in_system_mode(), ctx.actor.key_id)
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
    wanted = [(w.req.lines[0].sku_code, w.req.lines[0].location_code or "") for w in batch]

    async def work(conn: AsyncConnection) -> list[Answer]:
        now = ctx.clock()
        db = await pg.driver(conn)
        resolved = await pg.run(db.fetch, _RESOLVE, [c[0] for c in wanted], [c[1] for c in wanted], pg.naive(now))
        # the members whose SKU and location exist and are active, at their positions; the others: the
        # ordinary path says what is wrong, as it always has
        pair_of = {i: (r[0], r[1]) for i, r in enumerate(resolved) if r[0] is not None and r[1] is not None}
        due = sorted({r[0] for r in resolved if r[0] is not None and r[2]})
        known = [i for i in range(len(batch)) if i in pair_of]
        rids = [str(uuid.uuid4()) for _ in batch]
        expires = [now + timedelta(seconds=w.ttl) for w in batch]
        claimed = set()
        if known:
            claimed = {
                r["id"]
                for r in await pg.run(
                    db.fetch,
                    _CLAIM,
                    ReservationStatus.ACTIVE.value,
                    pg.naive(now),
                    [rids[i] for i in known],
                    [batch[i].req.idempotency_scope for i in known],
                    [batch[i].req.idempotency_key for i in known],
                    [batch[i].fingerprint for i in known],
                    [batch[i].req.cart_ref for i in known],
                    [pg.naive(expires[i]) for i in known],
                    [batch[i].ctx.actor.key_id for i in known],
                )
            }
        mine = [i for i in known if rids[i] in claimed]  # the others: repeats, answered the usual way
        if not mine:
            return [None] * len(batch)
        # holds past their expiry never block a new reservation (as in the ordinary path)
        if due:
            await expire_due(conn, now, sku_ids=due, wait=True)
        positions = sorted({pair_of[i] for i in mine})
        locked_rows = await pg.run(db.fetch, _LOCK, [p[0] for p in positions], [p[1] for p in positions])
        locked.set()  # the next batch may start its work before the locks
        available = {(r[0], r[1]): int(r[2]) for r in locked_rows}
        # no position yet: the ordinary path refuses it with its own message
        gone = [rids[i] for i in mine if pair_of[i] not in available]
        mine = [i for i in mine if pair_of[i] in available]
        # each position's members in arrival order, judged as one-by-one holds would be (domain.combining)
        members: dict[stock.Pair, list[int]] = {}
        for i in mine:
            members.setdefault(pair_of[i], []).append(i)
        verdict_of: dict[int, Verdict] = {}
        for pair, queued in members.items():
            verdicts = decide(available[pair], [batch[i].quantity for i in queued])
            verdict_of.update(zip(queued, verdicts, strict=True))
        accepted = [i for i in mine if verdict_of[i].accepted]
        # a refused attempt is not remembered: its key stays free
        forget = gone + [rids[i] for i in mine if not verdict_of[i].accepted]
        if forget:
            await pg.run(db.execute, _FORGET, forget)
        if accepted:
            await _hold(conn, db, now, batch, rids, accepted, pair_of)
        answers: list[Answer] = []
        for i, waiter in enumerate(batch):
            v = verdict_of.get(i)
            sku_code, location_code = wanted[i]
            if v is None:
                answers.append(None)
            elif v.accepted:
                answers.append(_view(waiter.req, rids[i], now, expires[i], sku_code, location_code))
            else:
                answers.append(_refusal(waiter.quantity, v, sku_code, location_code))
        return answers

    return await ctx.db.write(work)


async def _hold(
    conn: AsyncConnection,
    db: asyncpg.Connection,
    now: datetime,
    batch: Sequence[_Waiter],
    rids: list[str],
    accepted: list[int],
    pair_of: dict[int, stock.Pair],
) -> None:
    """Hold the accepted members' units (they fit: decided under the row locks), with their lines, ledger
    rows, the positions' outbox rows and the sales: each position's version bumped once per hold, the
    ledger rows' versions consecutive in arrival order."""
    units: dict[stock.Pair, int] = defaultdict(int)
    holds: dict[stock.Pair, int] = defaultdict(int)
    for i in accepted:
        units[pair_of[i]] += batch[i].quantity
        holds[pair_of[i]] += 1
    positions = sorted(units)
    versions = {
        (r[0], r[1]): int(r[2])
        for r in await pg.run(
            db.fetch,
            _HOLD,
            [p[0] for p in positions],
            [p[1] for p in positions],
            [units[p] for p in positions],
            [holds[p] for p in positions],
            pg.naive(now),
            [rids[i] for i in accepted],
            [pair_of[i][0] for i in accepted],
            [pair_of[i][1] for i in accepted],
            [batch[i].quantity for i in accepted],
        )
    }
    if len(versions) != len(positions):  # cannot happen under the locks taken; never hold past the condition
        refused = sorted(set(positions) - set(versions))
        raise RuntimeError(f"combined hold at {refused} refused")
    next_version = {p: versions[p] - holds[p] + 1 for p in positions}
    ledger = []
    for i in accepted:
        pair = pair_of[i]
        ledger.append(reserved_row(pair, batch[i].quantity, next_version[pair], now, rids[i], batch[i].req.cart_ref))
        next_version[pair] += 1
    await stock.write_ledger(conn, ledger)
    note_changed(positions)  # the relay's hint (the outbox rows went in with the hold)
    # issue 18: sales velocity; one note of each SKU's total equals one per hold (same instant)
    by_sku: dict[int, int] = defaultdict(int)
    for pair, q in units.items():
        by_sku[pair[0]] += q
    await demand.note_reserved(conn, now, "", by_sku, "")


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
