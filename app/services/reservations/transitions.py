"""State changes on an existing reservation: commit, release, extend, and releasing a cart's holds.

Every state change is a conditional UPDATE on the reservation row (`WHERE status = 'ACTIVE' AND
expires_at > now`): commit, release and the expiry sweeper can race on one reservation and exactly one
of them wins.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import reservation_lines, reservations
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import EventStatus, LedgerKind
from app.domain.quantities import Delta
from app.domain.reservations import Action, Outcome, ReservationStatus, repeat_commit, transition, validate_ttl
from app.services import channels, demand
from app.services.context import Actor, Ctx
from app.services.reservations.reads import load_views, seen_by
from app.services.views import ReservationView

r_ = reservations
rl = reservation_lines


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
                *seen_by(ctx.actor),
            )
            .values(**values, updated_at=now)
            .returning(r_.c.id)
        )
        if changed.first() is None:
            return await _refuse_or_repeat(conn, now, reservation_id, action, order_ref, ctx.actor)
        if action in _MOVES:
            kind, d_reserved, d_committed = _MOVES[action]
            await move_lines(conn, now, [reservation_id], kind, d_reserved, d_committed)
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


async def move_lines(
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
        await move_lines(conn, now, released, LedgerKind.RESERVATION_RELEASED, -1, 0)
    return released
