"""Checkout reservations: reserve (all lines or none), commit, release, extend, and expiry.

Every state change is a conditional UPDATE on the reservation row (`WHERE status = 'ACTIVE' AND
expires_at > now`): commit, release and the expiry sweeper can race on one reservation and exactly
one of them wins. Units are held with `stock.hold`, the conditional update that makes overselling
impossible.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import bindparam, func, insert, literal, select, tuple_, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.engine import is_unique_violation
from app.db.tables import inventory_events, locations, reservation_lines, reservations, skus, stock_levels
from app.domain.accounts import b2b_fingerprint, b2b_request_errors
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import EventStatus, LedgerKind
from app.domain.quantities import Delta
from app.domain.reservations import (
    Action,
    Outcome,
    RequestedLine,
    ReservationStatus,
    effective_status,
    lines_fingerprint,
    plan_split,
    repeat_commit,
    transition,
    validate_lines,
    validate_ttl,
)
from app.services import channel_external_holds, channels, demand
from app.services.context import SYSTEM, Actor, Ctx
from app.services.views import ReservationLineView, ReservationView

r_ = reservations
rl = reservation_lines
# a line without a location re-reads and re-plans when another checkout took its units meanwhile
_MAX_REPLANS = 8


# The checkout path's statements, built once (building one costs about as much CPU as running it).
# Claiming an idempotency key: the reservation row, unless the key is taken (then no row comes back).
_CLAIM_POSTGRES = (
    postgresql.insert(r_)
    .on_conflict_do_nothing(index_elements=[r_.c.tenant_id, r_.c.idempotency_scope, r_.c.idempotency_key])
    .returning(r_.c.id)
)
_CLAIM_SQLITE = (
    sqlite.insert(r_)
    .on_conflict_do_nothing(index_elements=[r_.c.tenant_id, r_.c.idempotency_scope, r_.c.idempotency_key])
    .returning(r_.c.id)
)
# SKUs and locations of a request in one round trip
_RESOLVE = union_all(
    select(literal("S").label("kind"), skus.c.id, skus.c.code, skus.c.active).where(
        skus.c.code.in_(bindparam("sku_codes", expanding=True))
    ),
    select(literal("L").label("kind"), locations.c.id, locations.c.code, locations.c.active).where(
        locations.c.code.in_(bindparam("location_codes", expanding=True))
    ),
)
_INSERT_LINE = insert(rl)


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    lines: list[RequestedLine]
    idempotency_key: str
    ttl_seconds: int | None = None
    channel_code: str | None = None
    cart_ref: str | None = None
    idempotency_scope: str = ""
    # B2B (issue 19): the account the hold is for (under `channel_code`), and whether to hold what the
    # figure allows instead of refusing (a partial hold)
    account_code: str | None = None
    allow_partial: bool = False


async def reserve(ctx: Ctx, req: ReserveRequest) -> ReservationView:
    """Hold every line or nothing. Raises Refused with the reasons when it cannot."""
    s = ctx.settings
    errors = validate_lines(req.lines, s.max_units_per_reservation)
    ttl = validate_ttl(req.ttl_seconds, s.default_ttl_seconds, s.max_ttl_seconds)
    if isinstance(ttl, UserError):
        errors.append(ttl)
    if not req.idempotency_key.strip() or len(req.idempotency_key) > 200:
        errors.append(
            UserError(ErrorCode.INVALID_INPUT, "idempotencyKey must be 1-200 characters", ("idempotencyKey",))
        )
    if req.cart_ref is not None and len(req.cart_ref) > 200:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "cartRef is at most 200 characters", ("cartRef",)))
    errors += b2b_request_errors(req.channel_code, req.account_code, req.allow_partial)
    if errors:
        raise Refused(errors)
    assert isinstance(ttl, int)
    fingerprint = b2b_fingerprint(
        lines_fingerprint(req.lines, req.channel_code, req.cart_ref), req.account_code, req.allow_partial
    )

    async def work(conn: AsyncConnection) -> ReservationView:
        now = ctx.clock()
        # claim the key first: one statement tells a first call from a retry, and a concurrent call
        # with the same key waits here on the unique index, before either holds anything
        rid = await _claim_key(conn, req, now, ttl, fingerprint, ctx.actor.key_id)
        if rid is None:
            earlier = await _by_idempotency_key(conn, req.idempotency_scope, req.idempotency_key)
            return await _repeat(conn, ctx, earlier, fingerprint)
        return await _hold_all(conn, req, now, rid, now + timedelta(seconds=ttl))

    try:
        return await ctx.db.write(work)
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        # a concurrent call with the same key won the insert: answer as a repeat of it
        return await ctx.db.write(work)


async def _by_idempotency_key(conn: AsyncConnection, scope: str, key: str) -> Any:
    result = await conn.execute(select(r_).where(r_.c.idempotency_scope == scope, r_.c.idempotency_key == key))
    return result.first()


async def _repeat(conn: AsyncConnection, ctx: Ctx, row: Any, fingerprint: str) -> ReservationView:
    if row.fingerprint != fingerprint:
        raise Refused(
            [
                UserError(
                    ErrorCode.IDEMPOTENCY_CONFLICT,
                    "this idempotencyKey was used for a different reservation",
                    ("idempotencyKey",),
                )
            ]
        )
    return (await load_views(conn, ctx.clock(), [row.id]))[0]


async def _claim_key(
    conn: AsyncConnection, req: ReserveRequest, now: datetime, ttl: int, fingerprint: str, owner_key_id: str | None
) -> str | None:
    """Insert the ACTIVE reservation row unless its idempotency key is taken; its id, or None if taken.

    A refusal later in the transaction rolls the row back, so a refused attempt is not remembered."""
    row = _active_row(now, ttl, req.idempotency_scope, req.idempotency_key, fingerprint, req.channel_code, req.cart_ref)
    row["owner_key_id"] = owner_key_id
    row["account_code"] = req.account_code
    stmt = _CLAIM_POSTGRES if conn.dialect.name == "postgresql" else _CLAIM_SQLITE
    return cast(str | None, (await conn.execute(stmt, row)).scalar_one_or_none())


async def _hold_all(
    conn: AsyncConnection, req: ReserveRequest, now: datetime, rid: str, expires_at: datetime
) -> ReservationView:
    sku_rows, loc_rows = await _resolve(conn, req)
    # holds past their expiry never block a new reservation, even before the sweeper runs: they are given
    # back first, waiting for a sweeper that is expiring one right now rather than skipping it
    await expire_due(conn, now, sku_ids=sorted({r.id for r in sku_rows.values()}), wait=True)
    if req.channel_code is None and all(ln.location_code is not None for ln in req.lines):
        return await _hold_named(conn, req, now, rid, expires_at, sku_rows, loc_rows)
    held: dict[stock.Pair, int] = defaultdict(int)
    holds: list[stock.Hold] = []
    backordered: dict[stock.Pair, int] = {}
    preordered: dict[stock.Pair, int] = {}
    # lines in primary-key order: two checkouts wanting the same SKUs lock their rows in the same order
    ordered = sorted(req.lines, key=lambda ln: (sku_rows[ln.sku_code].id, ln.location_code or ""))
    if req.channel_code is not None:
        # under a channel: at most its figure per SKU, enforced behind the (channel, SKU) guard row
        taken = await channels.hold_under_channel(
            conn,
            now,
            req.channel_code,
            ordered,
            sku_rows,
            loc_rows,
            lambda c, t, ids: expire_due(c, t, sku_ids=ids),
            account_code=req.account_code,
            allow_partial=req.allow_partial,
        )
        held, holds, backordered = taken.held, taken.holds, taken.backordered
        preordered = taken.preordered  # issue 18
        ordered = []
    for line in ordered:
        sku_id = sku_rows[line.sku_code].id
        if line.location_code is not None:
            pair = (sku_id, loc_rows[line.location_code].id)
            version = await stock.hold(conn, pair[0], pair[1], line.quantity, now)
            if version is None:
                raise Refused([await _insufficient(conn, line, [pair[1]])])
            held[pair] += line.quantity
            holds.append((pair, line.quantity, version))
        else:
            for pair, q, version in await _hold_anywhere(conn, now, sku_id, line):
                held[pair] += q
                holds.append((pair, q, version))
    expected = await record_holds(conn, now, rid, held, holds, req.cart_ref, backordered, preordered)
    view = _view_of_new(req, now, expires_at, rid, sku_rows, loc_rows, held, backordered, expected)
    return view if view is not None and not preordered else (await load_views(conn, now, [rid]))[0]


async def _hold_named(
    conn: AsyncConnection,
    req: ReserveRequest,
    now: datetime,
    rid: str,
    expires_at: datetime,
    sku_rows: dict[str, Any],
    loc_rows: dict[str, Any],
) -> ReservationView:
    """The usual checkout: every line names its location, so the rows to write are known up front.

    The lines and outbox rows go in before the holds, so a position's row lock is held only for the
    hold, its ledger row and the commit: on a hot SKU, checkouts queue on that lock, and every round
    trip inside it costs throughput. A refused hold rolls all of it back."""
    wanted: dict[stock.Pair, int] = defaultdict(int)
    line_of: dict[stock.Pair, RequestedLine] = {}
    for line in req.lines:
        assert line.location_code is not None
        pair = (sku_rows[line.sku_code].id, loc_rows[line.location_code].id)
        wanted[pair] += line.quantity
        line_of[pair] = line
    pairs = sorted(wanted)  # primary-key order: checkouts wanting the same rows lock them in one order
    await stock.insert_rows(
        conn,
        _INSERT_LINE,
        [{"reservation_id": rid, "sku_id": p[0], "location_id": p[1], "quantity": wanted[p]} for p in pairs],
    )
    await stock.enqueue_changes(conn, pairs, now)
    ledger = []
    for pair in pairs:
        version = await stock.hold(conn, pair[0], pair[1], wanted[pair], now)
        if version is None:
            raise Refused([await _insufficient(conn, line_of[pair], [pair[1]])])
        ledger.append(_reserved_row(pair, wanted[pair], version, now, rid, req.cart_ref))
    await stock.write_ledger(conn, ledger)
    await demand.note_reserved(conn, now, rid, _by_sku(wanted), "")  # issue 18: sales velocity
    view = _view_of_new(req, now, expires_at, rid, sku_rows, loc_rows, wanted, {}, {})
    assert view is not None  # every location was named
    return view


def _by_sku(*per_pair: dict[stock.Pair, int]) -> dict[int, int]:
    units: dict[int, int] = defaultdict(int)
    for part in per_pair:
        for pair, q in part.items():
            units[pair[0]] += q
    return units


def _reserved_row(
    pair: stock.Pair, quantity: int, version: int, now: datetime, reservation_id: str, reference: str | None
) -> dict[str, Any]:
    """The ledger row of units held for a reservation (the fold of the ledger must equal the position)."""
    return stock.ledger_row(
        kind=LedgerKind.RESERVED.value,
        status=EventStatus.APPLIED.value,
        pair=pair,
        quantity=quantity,
        delta=Delta(reserved=quantity),
        version=version,
        now=now,
        reservation_id=reservation_id,
        reference=reference,
    )


def _view_of_new(
    req: ReserveRequest,
    now: datetime,
    expires_at: datetime,
    rid: str,
    sku_rows: dict[str, Any],
    loc_rows: dict[str, Any],
    held: dict[stock.Pair, int],
    backordered: dict[stock.Pair, int],
    expected: dict[stock.Pair, datetime],
) -> ReservationView | None:
    """The new reservation as load_views would read it back, without the two reads, when every line's
    location was named in the request (the usual checkout); None when a location was chosen for it."""
    sku_code = {r.id: r.code for r in sku_rows.values()}
    location_code = {r.id: r.code for r in loc_rows.values()}
    pairs = set(held) | set(backordered)
    if any(p[1] not in location_code for p in pairs):
        return None
    lines = sorted(
        (
            ReservationLineView(
                sku_code[p[0]],
                location_code[p[1]],
                held.get(p, 0) + backordered.get(p, 0),
                backordered.get(p, 0),
                expected.get(p) if backordered.get(p) else None,
            )
            for p in pairs
        ),
        key=lambda ln: (ln.sku_code, ln.location_code),
    )
    return ReservationView(
        id=rid,
        status=ReservationStatus.ACTIVE,
        expires_at=expires_at,
        created_at=now,
        cart_ref=req.cart_ref,
        order_ref=None,
        channel_code=req.channel_code,
        lines=tuple(lines),
    )


async def _resolve(conn: AsyncConnection, req: ReserveRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    codes = {ln.sku_code for ln in req.lines}
    loc_codes = {ln.location_code for ln in req.lines if ln.location_code is not None}
    # SKUs and locations in one round trip: this runs on every checkout
    sku_rows: dict[str, Any] = {}
    loc_rows: dict[str, Any] = {}
    for r in await conn.execute(_RESOLVE, {"sku_codes": list(codes), "location_codes": list(loc_codes)}):
        (sku_rows if r.kind == "S" else loc_rows)[r.code] = r
    errors: list[UserError] = []
    for i, ln in enumerate(req.lines):
        where = ("lines", str(i))
        sku = sku_rows.get(ln.sku_code)
        if sku is None:
            errors.append(UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {ln.sku_code!r}", (*where, "skuCode")))
        elif not sku.active:
            errors.append(UserError(ErrorCode.INACTIVE_SKU, f"SKU {ln.sku_code!r} is deactivated", (*where, "skuCode")))
        if ln.location_code is not None:
            loc = loc_rows.get(ln.location_code)
            if loc is None:
                errors.append(
                    UserError(ErrorCode.UNKNOWN_LOCATION, f"no location {ln.location_code!r}", (*where, "locationCode"))
                )
            elif not loc.active:
                errors.append(
                    UserError(
                        ErrorCode.INACTIVE_LOCATION,
                        f"location {ln.location_code!r} is inactive",
                        (*where, "locationCode"),
                    )
                )
    if errors:
        raise Refused(errors)
    return sku_rows, loc_rows


async def _hold_anywhere(
    conn: AsyncConnection, now: datetime, sku_id: int, line: RequestedLine
) -> list[tuple[stock.Pair, int, int]]:
    """Take a line from active locations in priority order, splitting across them when needed."""
    taken: list[tuple[stock.Pair, int, int]] = []
    left = line.quantity
    for _ in range(_MAX_REPLANS):
        candidates = await _candidates(conn, sku_id)
        plan = plan_split(left, candidates)
        if sum(q for _, q in plan) < left:
            break
        for location_id, q in plan:
            version = await stock.hold(conn, sku_id, location_id, q, now)
            if version is None:
                break  # another checkout took these units since we looked: plan again
            taken.append(((sku_id, location_id), q, version))
            left -= q
        if left == 0:
            return taken
    raise Refused([await _insufficient(conn, line, [c for c, _ in await _candidates(conn, sku_id)], left)])


async def _candidates(conn: AsyncConnection, sku_id: int) -> list[tuple[int, int]]:
    available = stock.available_sql()
    rows = await conn.execute(
        select(stock_levels.c.location_id, available.label("available"))
        .join(locations, locations.c.id == stock_levels.c.location_id)
        .where(stock_levels.c.sku_id == sku_id, locations.c.active.is_(True), available > 0)
        .order_by(locations.c.priority, locations.c.code)
    )
    return [(r.location_id, int(r.available)) for r in rows]


async def _insufficient(
    conn: AsyncConnection, line: RequestedLine, location_ids: list[int], short: int | None = None
) -> UserError:
    available = 0
    if location_ids:
        sku_id = await conn.scalar(select(skus.c.id).where(skus.c.code == line.sku_code))
        rows = await conn.execute(
            select(stock.available_sql()).where(
                stock_levels.c.sku_id == sku_id, stock_levels.c.location_id.in_(location_ids)
            )
        )
        available = sum(max(0, int(v)) for (v,) in rows)
    where = f" at {line.location_code}" if line.location_code else ""
    return UserError(
        ErrorCode.INSUFFICIENT_STOCK,
        f"{line.sku_code}: {line.quantity} requested{where}, {available} available",
        ("lines", line.sku_code),
    )


# --- state changes on an existing reservation ---------------------------------------------------


async def commit(ctx: Ctx, reservation_id: str, order_ref: str) -> ReservationView:
    if not order_ref.strip() or len(order_ref) > 200:
        raise Refused([UserError(ErrorCode.INVALID_INPUT, "orderRef must be 1-200 characters", ("orderRef",))])
    return await _change(
        ctx,
        reservation_id,
        Action.COMMIT,
        {"status": ReservationStatus.COMMITTED.value, "order_ref": order_ref},
        order_ref=order_ref,
    )


async def release(ctx: Ctx, reservation_id: str) -> ReservationView:
    return await _change(ctx, reservation_id, Action.RELEASE, {"status": ReservationStatus.RELEASED.value})


async def extend(ctx: Ctx, reservation_id: str, ttl_seconds: int) -> ReservationView:
    s = ctx.settings
    ttl = validate_ttl(ttl_seconds, s.default_ttl_seconds, s.max_ttl_seconds)
    if isinstance(ttl, UserError):
        raise Refused([ttl])
    return await _change(ctx, reservation_id, Action.EXTEND, {"expires_at": ctx.clock() + timedelta(seconds=ttl)})


_MOVES: dict[Action, tuple[LedgerKind, int, int]] = {
    # action: (ledger kind, reserved change per unit, committed change per unit)
    Action.COMMIT: (LedgerKind.RESERVATION_COMMITTED, -1, 1),
    Action.RELEASE: (LedgerKind.RESERVATION_RELEASED, -1, 0),
}


async def _change(
    ctx: Ctx, reservation_id: str, action: Action, values: dict[str, Any], order_ref: str | None = None
) -> ReservationView:
    async def work(conn: AsyncConnection) -> ReservationView:
        now = ctx.clock()
        changed = await conn.execute(
            update(r_)
            .where(
                r_.c.id == reservation_id,
                r_.c.status == ReservationStatus.ACTIVE.value,
                r_.c.expires_at > now,
                *_visible_to(ctx.actor),
            )
            .values(**values, updated_at=now)
            .returning(r_.c.id)
        )
        if changed.first() is None:
            return await _refuse_or_repeat(conn, now, reservation_id, action, order_ref, ctx.actor)
        if action in _MOVES:
            kind, d_reserved, d_committed = _MOVES[action]
            await _move_lines(conn, now, [reservation_id], kind, d_reserved, d_committed)
        return (await load_views(conn, now, [reservation_id]))[0]

    return await ctx.db.write(work)


async def _refuse_or_repeat(
    conn: AsyncConnection,
    now: datetime,
    reservation_id: str,
    action: Action,
    order_ref: str | None,
    actor: Actor,
) -> ReservationView:
    # another key's reservation is answered as one that does not exist: ids cannot be probed
    views = await load_views(conn, now, [reservation_id], actor)
    if not views:
        raise Refused([UserError(ErrorCode.RESERVATION_NOT_FOUND, f"no reservation {reservation_id!r}", ("id",))])
    view = views[0]
    outcome = transition(action, view.status)
    if outcome is Outcome.NO_OP and action is Action.COMMIT:
        assert order_ref is not None
        outcome = repeat_commit(view.order_ref, order_ref)
        if isinstance(outcome, ErrorCode):
            message = f"reservation is COMMITTED for another order ({view.order_ref}), not {order_ref}"
            raise Refused([UserError(outcome, message, ("orderRef",))])
    if isinstance(outcome, ErrorCode):
        raise Refused([UserError(outcome, f"reservation is {view.status.value}", ("id",))])
    assert outcome is Outcome.NO_OP, "an ACTIVE reservation would have matched the update"
    return views[0]


async def _move_lines(
    conn: AsyncConnection,
    now: datetime,
    reservation_ids: list[str],
    kind: LedgerKind,
    d_reserved: int,
    d_committed: int,
) -> set[stock.Pair]:
    # a channel's counters first: every path takes guard rows before stock rows (no lock-order deadlock)
    await channels.release_channel_holds(conn, reservation_ids, committed=d_committed != 0)
    lines = list(
        await conn.execute(
            select(rl)
            .where(rl.c.reservation_id.in_(reservation_ids))
            .order_by(rl.c.sku_id, rl.c.location_id, rl.c.reservation_id)
        )
    )
    if d_committed:
        # a backorder may sit where no stock was ever recorded: its order needs a position to land on
        await stock.ensure_positions(conn, [(ln.sku_id, ln.location_id) for ln in lines if ln.backordered], now)
    ledger: list[dict[str, Any]] = []
    pairs: set[stock.Pair] = set()
    forgotten: list[Any] = []
    for line in lines:
        pair = (line.sku_id, line.location_id)
        pairs.add(pair)
        if not d_committed and line.backorder_open:
            # a backorder given up before its units arrived: they may be promised to someone else
            await stock.forget_backorder(conn, pair, int(line.backorder_open))
            forgotten.append(line)
        # backordered units were never reserved stock; an order placed for them is committed against
        # the incoming units (shown as oversold until they arrive) and stays promised against them
        moved = line.quantity + (line.backordered if d_committed else 0)
        if moved == 0:
            continue
        delta = Delta(reserved=d_reserved * line.quantity, committed=d_committed * moved)
        version = await stock.apply_delta(conn, pair, delta, now)
        ledger.append(
            stock.ledger_row(
                kind=kind.value,
                status=EventStatus.APPLIED.value,
                pair=pair,
                quantity=moved,
                delta=delta,
                version=version,
                now=now,
                reservation_id=line.reservation_id,
            )
        )
    for line in forgotten:
        await conn.execute(
            update(rl)
            .where(
                rl.c.reservation_id == line.reservation_id,
                rl.c.sku_id == line.sku_id,
                rl.c.location_id == line.location_id,
            )
            .values(backorder_open=0)
        )
    await stock.write_ledger(conn, ledger)
    await stock.enqueue_changes(conn, pairs, now)
    if not d_committed:
        await demand.give_back_preorders(conn, reservation_ids)  # issue 18
    return pairs


async def expire_due(
    conn: AsyncConnection, now: datetime, sku_ids: list[int] | None = None, limit: int = 500, wait: bool = False
) -> int:
    """Turn ACTIVE reservations past expiry into EXPIRED and give their units back. Returns how many.

    Safe with many processes: on Postgres each sweeper skips rows another has locked, and the
    status condition means a reservation is expired (or committed, or released) exactly once.
    `wait`: wait for a reservation another transaction has locked instead of skipping it (a reserve
    that needs its units must see them given back, not find them still held by a sweeper mid-way).
    The clock expires a hold, not the caller whose reserve found it due: its ledger rows name no key.
    """
    with stock.ledger_actor(None):
        return await _expire_due(conn, now, sku_ids, limit, wait)


async def _expire_due(
    conn: AsyncConnection, now: datetime, sku_ids: list[int] | None, limit: int, wait: bool
) -> int:
    due = select(r_.c.id).where(r_.c.status == ReservationStatus.ACTIVE.value, r_.c.expires_at <= now)
    if sku_ids is not None:
        due = due.where(r_.c.id.in_(select(rl.c.reservation_id).where(rl.c.sku_id.in_(sku_ids))))
    due = due.order_by(r_.c.expires_at).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=not wait)
    ids = [r.id for r in await conn.execute(due)]
    if not ids:
        return 0
    expired = await conn.execute(
        update(r_)
        .where(r_.c.id.in_(ids), r_.c.status == ReservationStatus.ACTIVE.value)
        .values(status=ReservationStatus.EXPIRED.value, updated_at=now)
        .returning(r_.c.id)
    )
    won = [r.id for r in expired]
    if won:
        await _move_lines(conn, now, won, LedgerKind.RESERVATION_EXPIRED, -1, 0)
    return len(won)


async def sweep_expired(ctx: Ctx) -> int:
    """One pass of the background sweeper, in its own transaction."""

    async def work(conn: AsyncConnection) -> int:
        now = ctx.clock()
        expired = await expire_due(conn, now) + await channel_external_holds.expire_due(conn, now)
        return expired + await demand.review_due(conn, now)  # issue 18: buffers that decay

    return await ctx.db.write(work)


# --- reading ------------------------------------------------------------------------------------


def _visible_to(actor: Actor) -> list[Any]:
    """The condition on reservation rows for what this actor may see and act on (none: everything)."""
    if actor.sees_all:
        return []
    return [r_.c.owner_key_id == actor.key_id] if actor.key_id is not None else [literal(False)]


async def load_views(
    conn: AsyncConnection, now: datetime, ids: list[str], visible_to: Actor = SYSTEM
) -> list[ReservationView]:
    """The reservations with these ids that `visible_to` may see, in the order of `ids`."""
    rows = list(await conn.execute(select(r_).where(r_.c.id.in_(ids), *_visible_to(visible_to))))
    if not rows:
        return []
    lines: dict[str, list[ReservationLineView]] = defaultdict(list)
    for ln in await conn.execute(
        select(
            rl.c.reservation_id,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
            # a line's units: from stock and, under a channel's backorder allowance, against incoming
            (rl.c.quantity + rl.c.backordered).label("quantity"),
            rl.c.backordered,
            rl.c.expected_at,
            rl.c.preordered,
        )
        .join(skus, skus.c.id == rl.c.sku_id)
        .join(locations, locations.c.id == rl.c.location_id)
        .where(rl.c.reservation_id.in_(ids))
        .order_by(skus.c.code, locations.c.code)
    ):
        lines[ln.reservation_id].append(
            ReservationLineView(
                ln.sku_code,
                ln.location_code,
                int(ln.quantity),
                int(ln.backordered),
                ln.expected_at if ln.backordered else None,
                int(ln.preordered),
            )
        )
    order = {rid: i for i, rid in enumerate(ids)}
    rows.sort(key=lambda r: order[r.id])
    return [
        ReservationView(
            id=r.id,
            status=effective_status(ReservationStatus(r.status), r.expires_at, now),
            expires_at=r.expires_at,
            created_at=r.created_at,
            cart_ref=r.cart_ref,
            order_ref=r.order_ref,
            channel_code=r.channel_code,
            lines=tuple(lines[r.id]),
        )
        for r in rows
    ]


async def get(ctx: Ctx, reservation_id: str) -> ReservationView | None:
    """The reservation, or None when there is none this actor may see."""
    async with ctx.db.read() as conn:
        views = await load_views(conn, ctx.clock(), [reservation_id], ctx.actor)
    return views[0] if views else None


async def by_cart(ctx: Ctx, cart_ref: str) -> list[ReservationView]:
    """The cart's reservations that this actor may see (an admin: every key's), oldest first."""
    async with ctx.db.read() as conn:
        ids = [
            r.id
            for r in await conn.execute(
                select(r_.c.id)
                .where(r_.c.cart_ref == cart_ref, *_visible_to(ctx.actor))
                .order_by(r_.c.created_at, r_.c.id)
            )
        ]
        return await load_views(conn, ctx.clock(), ids)


# --- building blocks for other services that hold stock (order routing) --------------------------


async def by_idempotency_key(conn: AsyncConnection, scope: str, key: str) -> Any:
    """The reservation row made with this key in this scope, or None."""
    return await _by_idempotency_key(conn, scope, key)


async def open_reservation(
    conn: AsyncConnection,
    now: datetime,
    *,
    idempotency_scope: str,
    idempotency_key: str,
    fingerprint: str,
    ttl_seconds: int,
    channel_code: str | None = None,
    cart_ref: str | None = None,
    order_ref: str | None = None,
    owner_key_id: str | None = None,
) -> str:
    """Insert an ACTIVE reservation row with no lines yet; returns its id. Insert it before holding:
    a concurrent call with the same key then fails on the unique key, before it holds anything."""
    row = _active_row(now, ttl_seconds, idempotency_scope, idempotency_key, fingerprint, channel_code, cart_ref)
    await conn.execute(insert(r_), {**row, "order_ref": order_ref, "owner_key_id": owner_key_id})
    return str(row["id"])


def _active_row(
    now: datetime,
    ttl_seconds: int,
    idempotency_scope: str,
    idempotency_key: str,
    fingerprint: str,
    channel_code: str | None,
    cart_ref: str | None,
) -> dict[str, Any]:
    """A new ACTIVE reservation row (reserve and routeAndReserve both open one before holding)."""
    return {
        "id": str(uuid.uuid4()),
        "status": ReservationStatus.ACTIVE.value,
        "idempotency_scope": idempotency_scope,
        "idempotency_key": idempotency_key,
        "fingerprint": fingerprint,
        "channel_code": channel_code,
        "cart_ref": cart_ref,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "owner_key_id": None,
    }


async def record_holds(
    conn: AsyncConnection,
    now: datetime,
    reservation_id: str,
    held: dict[stock.Pair, int],
    holds: list[stock.Hold],
    reference: str | None = None,
    backordered: dict[stock.Pair, int] | None = None,
    preordered: dict[stock.Pair, int] | None = None,
) -> dict[stock.Pair, datetime]:
    """The lines, ledger rows and outbox rows for units already taken with `stock.hold` (and, under a
    channel's backorder allowance, units `backordered` against incoming stock: a line, no ledger row).

    `held` is the units per position (one line each); `holds` every hold that took them, one ledger
    row each, so each version a hold made has its row. Returns the expected arrival each backorder was
    promised against, where one is known."""
    backordered = {p: q for p, q in (backordered or {}).items() if q}
    expected = await _expected_arrivals(conn, list(backordered), now)
    pairs = sorted((p, q) for p, q in held.items() if q)
    await stock.insert_rows(
        conn,
        _INSERT_LINE,
        [
            {
                "reservation_id": reservation_id,
                "sku_id": p[0],
                "location_id": p[1],
                "quantity": held.get(p, 0),
                "backordered": backordered.get(p, 0),
                "backorder_open": backordered.get(p, 0),
                "expected_at": expected.get(p),
                "preordered": (preordered or {}).get(p, 0),
            }
            for p in sorted({p for p, _ in pairs} | set(backordered))
        ],
    )
    await stock.write_ledger(
        conn,
        [_reserved_row(p, q, version, now, reservation_id, reference) for p, q, version in holds if q],
    )
    await stock.enqueue_changes(conn, {p for p, _ in pairs} | set(backordered), now)
    # issue 18: the reservation's units are demand under its channel (last: after its stock rows)
    await demand.note_reserved(conn, now, reservation_id, _by_sku({**held}, backordered))
    return expected


async def _expected_arrivals(
    conn: AsyncConnection, pairs: list[stock.Pair], now: datetime
) -> dict[stock.Pair, datetime]:
    """The earliest expected arrival still ahead at each position (what the channel figure shows)."""
    if not pairs:
        return {}
    ie = inventory_events
    rows = await conn.execute(
        select(ie.c.sku_id, ie.c.location_id, func.min(ie.c.expected_at).label("at"))
        .where(
            tuple_(ie.c.sku_id, ie.c.location_id).in_(pairs),
            ie.c.expected_at.is_not(None),
            ie.c.expected_at >= now,
        )
        .group_by(ie.c.sku_id, ie.c.location_id)
    )
    return {(r.sku_id, r.location_id): r.at for r in rows}


async def release_cart(
    conn: AsyncConnection, now: datetime, cart_ref: str, owner_key_id: str | None, keep: str | None = None
) -> list[str]:
    """Release the cart's ACTIVE, unexpired reservations made by `owner_key_id` (except `keep`) in the
    caller's transaction; the same conditional update as releaseReservation, so a concurrent commit or
    expiry wins cleanly. A cart ref names a cart within one key's reservations, as an idempotency key
    does: another key's cart of the same name is not touched, whatever that key's scopes."""
    released = [
        r.id
        for r in await conn.execute(
            update(r_)
            .where(
                r_.c.cart_ref == cart_ref,
                r_.c.owner_key_id.is_not_distinct_from(owner_key_id),
                r_.c.status == ReservationStatus.ACTIVE.value,
                r_.c.expires_at > now,
                r_.c.id != (keep or ""),
            )
            .values(status=ReservationStatus.RELEASED.value, updated_at=now)
            .returning(r_.c.id)
        )
    ]
    if released:
        await _move_lines(conn, now, released, LedgerKind.RESERVATION_RELEASED, -1, 0)
    return released
