"""Combining: concurrent checkouts held in one transaction each batch (issue 15, targets 1 and 2).

Why: in a flash sale every buyer wants the same SKU at the same location. One transaction per
reserve queues them all on that stock_levels row's lock, so the position takes at most one hold per
lock-hold-and-commit, however fast the rest of the service is. And on a spread load every reserve paid
its own BEGIN, statements and COMMIT, on the server and in Postgres. Here concurrent checkouts (in this
process, under one tenant and API key) queue in arrival order behind the batch in flight; when it has
its row locks (`Settings.combine_in_flight` 2) or has committed (1), the queue (up to
`Settings.combine_holds`) becomes the next batch, one transaction over all its positions: their rows
locked once in primary-key order, one UPDATE, one commit for all of them (a group commit). An idle
service pays nothing extra: a reserve that finds no batch in flight runs at once, the ordinary way.

Which requests: the usual checkout, one line at a named location, no channel and no B2B account
(`applies`). Everything else, and whatever a batch cannot answer itself (an idempotency key already
taken, an unknown or inactive SKU or location, a position that does not exist), goes the ordinary
way (`reserve` returns None), so those answers stay the ordinary path's.

Every promise of the ordinary path holds, per request:
- all or nothing: a request is one line, held in full or refused; a refused request's reservation
  row is deleted in the batch, so a refused attempt is not remembered (as a rolled-back one is not);
- no oversell, by construction: the batch's one UPDATE keeps the condition `available >= units` for
  each position (its accepted total), under the row locks the batch took to decide;
- idempotency: the keys are claimed in one INSERT ... ON CONFLICT DO NOTHING before anything is held;
  a taken key goes the ordinary way and is answered as a repeat. Two requests with one key never share
  a batch: the later one waits for the next batch, so it sees the first one's outcome as a repeat does;
- arrival order (FIFO, no buyer starves): the queue is served in order, and `domain.combining.decide`
  judges each request against what the earlier accepted ones on its position left, as one-by-one holds
  would; two batches in flight lock a shared position in their order (the second waits on the lock);
- a refusal says the exact shortfall: the units available at its turn (what a one-by-one run in arrival
  order would have said);
- gapless versions: each position's version is bumped by the number of its holds, one RESERVED ledger
  row per hold with consecutive versions in arrival order.
An error in a batch (after `Database.write`'s deadlock retries) fails every member with it; a member
whose client went away (its task cancelled) leaves the batch running for the others: batches run in a
task of their own, never in a caller's.

Batches run with the first member's context (tenant, the key that ledger rows name): the queue is per
(database, tenant, system mode, API key), so members share those.
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

# the batch's keys claimed (a key taken, now or by a transaction still running, which this waits for on
# the unique index, claims nothing), and per member, in the order given: whether its key was claimed,
# its SKU and location ids (NULL: unknown or inactive) and whether a hold on that SKU is past its expiry
# (then, and only then, the batch reclaims expired holds with the locking expire_due: the same
# non-locking check as pg.open_reservation). One round trip for what were two. The due check runs once
# for the batch and starts from the expired holds (the (status, expires_at) index), as
# pg.open_reservation's does: asked per member from the SKU's lines, it read every line of a hot SKU
# once per member (45 ms each at 13,490 lines; bench/reserve.py's HOT p99 went to 683 ms).
_OPEN = (
    "WITH c AS (INSERT INTO reservations (id, status, idempotency_scope, idempotency_key, fingerprint, "
    "channel_code, cart_ref, created_at, updated_at, expires_at, owner_key_id, account_code) "
    "SELECT id, $1, scope, key, fp, NULL, cart, $2, $2, exp, owner, NULL FROM unnest("
    "$3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[], $7::varchar[], $8::timestamp[], $9::varchar[]"
    ") AS t(id, scope, key, fp, cart, exp, owner) "
    "ON CONFLICT (tenant_id, idempotency_scope, idempotency_key) DO NOTHING RETURNING id), "
    "due AS (SELECT DISTINCT rl.sku_id FROM reservation_lines rl WHERE rl.sku_id IN "
    "(SELECT id FROM skus WHERE code = ANY($10::varchar[])) AND rl.reservation_id IN "
    "(SELECT r.id FROM reservations r WHERE r.status = 'ACTIVE' AND r.expires_at <= $2)) "
    "SELECT c.id IS NOT NULL, s.id, l.id, s.id IN (SELECT sku_id FROM due) "
    "FROM unnest($3::varchar[], $10::varchar[], $11::varchar[]) WITH ORDINALITY AS t(id, sku, loc, n) "
    "LEFT JOIN c ON c.id = t.id "
    "LEFT JOIN skus s ON s.code = t.sku AND s.active LEFT JOIN locations l ON l.code = t.loc AND l.active "
    "ORDER BY t.n"
)
_AVAILABLE = str(stock.available_sql().compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
# the batch's positions locked in primary-key order (the locks are taken above the sort, so in that
# order): two batches, or a batch and a multi-line checkout, never wait on each other in a cycle
_LOCK = (
    f"SELECT sku_id, location_id, {_AVAILABLE} AS available, version FROM stock_levels "
    "WHERE (sku_id, location_id) IN (SELECT * FROM unnest($1::int[], $2::int[])) "
    "ORDER BY sku_id, location_id FOR UPDATE"
)
# Everything the batch writes once it has decided, in one round trip inside the row locks (each one a
# wait every queued buyer shares): one UPDATE for all its positions, each by its accepted total and still
# under the hold condition (by construction, not by trusting the decision), its version bumped once per
# hold; for the positions that took their units, the accepted members' lines and the positions' outbox
# rows; the refused members' reservation rows deleted (a refused attempt is not remembered: its key stays
# free); the sales (issue 18, demand under no channel); the RESERVED ledger rows, their versions known
# from the locked rows. Then whether any channel has a dynamic buffer (the caller moves those).
_WRITE = (
    "WITH v AS (SELECT * FROM unnest($1::int[], $2::int[], $3::bigint[], $4::int[]) AS v(sku, loc, units, holds)), "
    "h AS (UPDATE stock_levels SET reserved = reserved + v.units, version = version + v.holds, updated_at = $5 "
    "FROM v WHERE sku_id = v.sku AND location_id = v.loc AND "
    f"{stock.can_hold(literal_column('v.units')).compile(dialect=postgresql.dialect())} "  # type: ignore[no-untyped-call]
    "RETURNING sku_id, location_id, version), "
    "line AS (INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity, backordered, "
    "backorder_open, preordered) SELECT t.r, t.sku, t.loc, t.q, 0, 0, 0 FROM h JOIN "
    "unnest($6::varchar[], $7::int[], $8::int[], $9::bigint[]) AS t(r, sku, loc, q) "
    "ON t.sku = h.sku_id AND t.loc = h.location_id), "
    "box AS (INSERT INTO outbox (sku_id, location_id, created_at) SELECT sku_id, location_id, $5 FROM h), "
    "gone AS (DELETE FROM reservations WHERE id = ANY($10::varchar[])), "
    "sale AS ("
    + pg.sales_upsert("unnest($11::int[], $12::varchar[], $13::float8[]) AS t(s, c, u)", "$5", "$14::float8")
    + f"), ev AS ({pg.ledger_from_unnest(15)}) "
    "SELECT (SELECT count(*) FROM h), EXISTS (SELECT 1 FROM channels WHERE dynamic_buffer_factor IS NOT NULL)"
)


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
    # a reserve that found the lane idle is running the ordinary path (the caller's own task)
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
    in flight in its lane (tenant, API key), else in the lane's next batch. Raises Refused like the
    ordinary path; None when the ordinary path must answer it (see the module docstring). `req` is
    validated.

    Why the idle case takes the ordinary path: a lone request pays no wait for a batch to form, and its
    path is as short (one statement claims, looks up and checks expiry; one holds and writes); only
    requests that arrive while a reserve is in flight queue."""
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
    """Run the lane's batches until its queue is empty and none is in flight, then forget the lane.

    With `Settings.combine_in_flight` 2, two batches may be in flight: the next one starts once the
    previous one holds its row locks, so it does its work before the locks (claiming keys, expiry)
    meanwhile and then locks its positions, waiting on those the previous one holds, which the database
    grants only after the previous one commits: on each position batches still lock, decide and commit in
    arrival order, and a hot row lock is never idle between them."""
    flying: deque[asyncio.Task[None]] = deque()  # batches started, oldest first
    try:
        while lane.queue or flying:
            if not lane.queue:
                await asyncio.shield(flying.popleft())
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
            flying.append(current)
            while len(flying) >= batch[0].ctx.settings.combine_in_flight:
                await asyncio.shield(flying.popleft())  # at most combine_in_flight in flight
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
    """BEGIN, the claim with the look-ups, the row locks, everything written, COMMIT: five round trips
    (and the rare expiry of due holds) for the whole batch."""
    ctx = batch[0].ctx
    wanted = [(w.req.lines[0].sku_code, w.req.lines[0].location_code or "") for w in batch]

    async def work(conn: AsyncConnection) -> list[Answer]:
        now = ctx.clock()
        db = await pg.driver(conn)
        rids = [str(uuid.uuid4()) for _ in batch]
        expires = [now + timedelta(seconds=w.ttl) for w in batch]
        opened = await pg.run(
            db.fetch,
            _OPEN,
            ReservationStatus.ACTIVE.value,
            pg.naive(now),
            rids,
            [w.req.idempotency_scope for w in batch],
            [w.req.idempotency_key for w in batch],
            [w.fingerprint for w in batch],
            [w.req.cart_ref for w in batch],
            [pg.naive(e) for e in expires],
            [w.ctx.actor.key_id for w in batch],
            [c[0] for c in wanted],
            [c[1] for c in wanted],
        )
        # the members whose key is theirs and whose SKU and location exist and are active, at their
        # positions. The others go the ordinary way: a taken key is answered as a repeat, an unknown code
        # with its own error (their claimed rows are deleted below: nothing of them stays)
        pair_of = {i: (r[1], r[2]) for i, r in enumerate(opened) if r[0] and r[1] is not None and r[2] is not None}
        forget = [rids[i] for i, r in enumerate(opened) if r[0] and i not in pair_of]
        mine = sorted(pair_of)
        # holds past their expiry never block a new reservation (as in the ordinary path)
        due = sorted({r[1] for i, r in enumerate(opened) if i in pair_of and r[3]})
        if due:
            await expire_due(conn, now, sku_ids=due, wait=True)
        positions = sorted({pair_of[i] for i in mine})
        locked_rows = (
            await pg.run(db.fetch, _LOCK, [p[0] for p in positions], [p[1] for p in positions]) if mine else []
        )
        locked.set()  # the next batch may start its work before the locks
        available = {(r[0], r[1]): int(r[2]) for r in locked_rows}
        version = {(r[0], r[1]): int(r[3]) for r in locked_rows}
        # no position yet: the ordinary path refuses it with its own message
        forget += [rids[i] for i in mine if pair_of[i] not in available]
        mine = [i for i in mine if pair_of[i] in available]
        # each position's members in arrival order, judged as one-by-one holds would be (domain.combining)
        members: dict[stock.Pair, list[int]] = {}
        for i in mine:
            members.setdefault(pair_of[i], []).append(i)
        verdict_of: dict[int, Verdict] = {}
        taken: dict[stock.Pair, int] = {}  # each position's accepted total (its one UPDATE)
        for pair, queued in members.items():
            quantities = [batch[i].quantity for i in queued]
            verdicts = decide(available[pair], quantities)
            verdict_of.update(zip(queued, verdicts, strict=True))
            if units := accepted_units(verdicts, quantities):
                taken[pair] = units
        accepted = [i for i in mine if verdict_of[i].accepted]
        forget += [rids[i] for i in mine if not verdict_of[i].accepted]
        if accepted or forget:
            await _write(conn, db, now, batch, rids, accepted, pair_of, version, taken, forget)
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


async def _write(
    conn: AsyncConnection,
    db: asyncpg.Connection,
    now: datetime,
    batch: Sequence[_Waiter],
    rids: list[str],
    accepted: list[int],
    pair_of: dict[int, stock.Pair],
    version: dict[stock.Pair, int],
    taken: dict[stock.Pair, int],
    forget: list[str],
) -> None:
    """Hold the accepted members' units (they fit: decided under the row locks) with all that goes with
    them, and forget the refused (_WRITE). Each position's version is bumped once per hold, its ledger
    rows' versions consecutive in arrival order from the locked version."""
    holds: dict[stock.Pair, int] = defaultdict(int)
    ledger = []
    for i in accepted:
        pair = pair_of[i]
        holds[pair] += 1
        ledger.append(
            reserved_row(pair, batch[i].quantity, version[pair] + holds[pair], now, rids[i], batch[i].req.cart_ref)
        )
    positions = sorted(taken)
    sold: dict[int, int] = defaultdict(int)  # one note of each SKU's total equals one per hold (same instant)
    for pair, q in taken.items():
        sold[pair[0]] += q
    skus = sorted(sold)
    held, dynamic = await pg.run(
        db.fetchrow,
        _WRITE,
        [p[0] for p in positions],
        [p[1] for p in positions],
        [taken[p] for p in positions],
        [holds[p] for p in positions],
        pg.naive(now),
        [rids[i] for i in accepted],
        [pair_of[i][0] for i in accepted],
        [pair_of[i][1] for i in accepted],
        [batch[i].quantity for i in accepted],
        forget,
        skus,
        [""] * len(skus),
        [float(sold[s]) for s in skus],
        demand.half_life_seconds(),
        *pg.ledger_columns(ledger),
    )
    if held != len(positions):  # cannot happen under the locks taken; never hold past the condition
        raise RuntimeError(f"combined hold at {positions} refused ({held} of {len(positions)} held)")
    if positions:
        note_changed(positions)  # the relay's hint (the outbox rows went in with the hold)
        if dynamic:
            await demand.refresh_buffers(conn, now, sku_ids=set(skus))  # as note_sales does after a sale


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
