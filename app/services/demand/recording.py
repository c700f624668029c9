"""Demand and sync lag recorded in the transactions that change them: sales (reservations and
reported ledger rows) and each push's acknowledgement. Each moves the dynamic buffers it feeds."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg
from app.db.tables import channel_sync_lag, reservations
from app.domain import demand
from app.services.context import Ctx
from app.services.demand.buffers import refresh_buffers
from app.services.demand.velocity import half_life_seconds

# --- sales ----------------------------------------------------------------------------------------


# The stored count decays from last_at to now (2^(-age / half-life); a clock that went back, another
# process's, never grows it), then the new units are added: demand.add_sale, in one prepared statement on
# the checkout's path (built with SQLAlchemy it was compiled again on every reserve: 40 % of the server's
# CPU per reserve in bench/reserve.py's profile)
# It also answers whether any channel has a dynamic buffer: without one there is nothing to move, and
# asking in the same statement saves the sale a round trip and a SQLAlchemy query (issue 15).
_NOTE_SALES = (
    "WITH sale AS ("
    + pg.sales_upsert("unnest($1::int[], $2::varchar[], $3::float8[]) AS t(s, c, u)", "$4", "$5::float8")
    + ") SELECT EXISTS (SELECT 1 FROM channels WHERE dynamic_buffer_factor IS NOT NULL)"
)


async def note_sales(conn: AsyncConnection, now: datetime, sales: Mapping[tuple[int, str], int]) -> None:
    """Add units sold per (SKU id, channel code or '') to the velocities, and move the dynamic buffers of
    those SKUs. Call it last in the sale's transaction (after its stock rows)."""
    rows = sorted((key, units) for key, units in sales.items() if units > 0)
    if not rows:
        return
    (sku_ids, codes), units = zip(*(key for key, _ in rows), strict=True), [float(q) for _, q in rows]
    dynamic = await pg.fetch_value(
        await pg.driver(conn), _NOTE_SALES, list(sku_ids), list(codes), units, pg.naive(now), half_life_seconds()
    )
    if dynamic:
        await refresh_buffers(conn, now, sku_ids={s for (s, _), _ in rows})


async def note_reserved(
    conn: AsyncConnection, now: datetime, reservation_id: str, units: Mapping[int, int], channel_code: str | None = None
) -> None:
    """A reservation's units per SKU as demand under its channel (looked up when not given)."""
    if not any(units.values()):
        return
    if channel_code is None:
        found = await conn.scalar(select(reservations.c.channel_code).where(reservations.c.id == reservation_id))
        channel_code = found or ""
    await note_sales(conn, now, {(s, channel_code): q for s, q in units.items()})


# ledger kinds that are demand when reported by an integration: a sale outside our reservations and an
# order taken elsewhere (a reservation's own rows count once, in note_reserved)
_DEMAND_KINDS = frozenset({"SOLD", "ORDER_PLACED"})
_COUNTED_STATUSES = frozenset({"APPLIED", "SUPERSEDED"})


def ledger_sales(rows: Iterable[tuple[str, str, int, int]]) -> list[tuple[int, int]]:
    """(SKU id, units) of the reported sales and orders among these ledger rows, each given as (kind,
    status, SKU id, quantity) (pg.LedgerRows.demand), as demand under no channel, by SKU id; for
    statements that record them themselves (pg.write_batch), followed by `refresh_buffers` of those
    SKUs when any channel has a dynamic buffer."""
    sales: dict[int, int] = defaultdict(int)
    for kind, status, sku_id, quantity in rows:
        if kind in _DEMAND_KINDS and status in _COUNTED_STATUSES and quantity > 0:
            sales[int(sku_id)] += int(quantity)
    return sorted(sales.items())


# --- sync lag ----------------------------------------------------------------------------------------


async def note_push(ctx: Ctx, channel_id: int, sent_at: datetime, acknowledged: bool) -> None:
    """A push to a channel's endpoint went out at `sent_at` and was acknowledged (2xx) or not, now.

    An acknowledgement is a sample from the first unacknowledged attempt: while an endpoint refuses,
    the channel shows old figures, which is exactly the lag the buffer must cover."""

    async def work(conn: AsyncConnection) -> None:
        now = ctx.clock()
        ins = postgresql.insert(channel_sync_lag).values(channel_id=channel_id, samples=0, waiting_since=sent_at)
        await conn.execute(ins.on_conflict_do_nothing())
        row = (
            await conn.execute(
                select(channel_sync_lag).where(channel_sync_lag.c.channel_id == channel_id).with_for_update()
            )
        ).one()
        waiting = row.waiting_since or sent_at
        if not acknowledged:
            if row.waiting_since is None:
                await conn.execute(
                    update(channel_sync_lag)
                    .where(channel_sync_lag.c.channel_id == channel_id)
                    .values(waiting_since=sent_at)
                )
            return
        sample = (now - min(waiting, sent_at)).total_seconds()
        lag = demand.measured_lag(row.measured_seconds, sample)
        await conn.execute(
            update(channel_sync_lag)
            .where(channel_sync_lag.c.channel_id == channel_id)
            .values(measured_seconds=lag, samples=channel_sync_lag.c.samples + 1, waiting_since=None, measured_at=now)
        )
        await refresh_buffers(conn, now, channel_ids=[channel_id])

    await ctx.db.write(work, notify=True)
