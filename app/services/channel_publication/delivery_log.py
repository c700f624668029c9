"""The delivery log (one row per push attempt), and `replay`: send a channel again from a version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import channel_deliveries, channel_publications
from app.domain.errors import ErrorCode, Refused, UserError
from app.services import channels as channel_service
from app.services.context import Ctx

cp = channel_publications
DELIVERY_LOG_DAYS = 14  # attempts older than this are pruned from the delivery log
DELIVERED, FAILED = "DELIVERED", "FAILED"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    channel_code: str
    attempted_at: datetime
    items: int
    min_version: int
    max_version: int
    status: str
    latency_ms: int
    error: str | None
    publisher: str


async def _channel_or_refuse(conn: AsyncConnection, channel_code: str) -> Any:
    channel = await channel_service.channel_row(conn, channel_code)
    if channel is None:
        raise Refused([UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {channel_code!r}", ("channelCode",))])
    return channel


async def deliveries(ctx: Ctx, channel_code: str, first: int = 50) -> list[Delivery]:
    """The channel's push attempts, newest first."""
    async with ctx.db.read() as conn:
        channel = await _channel_or_refuse(conn, channel_code)
        rows = await conn.execute(
            select(channel_deliveries)
            .where(channel_deliveries.c.channel_id == channel.id)
            .order_by(channel_deliveries.c.id.desc())
            .limit(first)
        )
        return [
            Delivery(
                id=int(r.id),
                channel_code=channel.code,
                attempted_at=r.attempted_at,
                items=int(r.items),
                min_version=int(r.min_version),
                max_version=int(r.max_version),
                status=r.status,
                latency_ms=int(r.latency_ms),
                error=r.error,
                publisher=r.publisher,
            )
            for r in rows
        ]


async def replay(ctx: Ctx, channel_code: str, from_version: int) -> int:
    """Make the channel's publisher send again every SKU acknowledged at `from_version` or later.

    Their acknowledgements are forgotten and their retry made due now, so whichever process publishes
    the channel sends their current figures at its next pass (with the current version: an endpoint
    that keeps the highest version applies them). Returns how many SKUs will be sent again.
    """
    if from_version < 0:
        raise Refused([UserError(ErrorCode.INVALID_INPUT, "fromVersion must be 0 or more", ("fromVersion",))])
    now = ctx.clock()

    async def work(conn: AsyncConnection) -> int:
        channel = await _channel_or_refuse(conn, channel_code)
        result = await conn.execute(
            update(cp)
            .where(cp.c.channel_id == channel.id, cp.c.acked_version >= from_version)
            .values(acked_version=None, attempts=0, last_error=None, next_attempt_at=now)
        )
        return int(result.rowcount)

    return await ctx.db.write(work, notify=False)


async def log_attempt(conn: AsyncConnection, attempt: dict[str, Any], now: datetime, prune: bool) -> None:
    """One push attempt, whatever came of it; `prune` also drops attempts older than DELIVERY_LOG_DAYS."""
    await conn.execute(insert(channel_deliveries).values(**attempt))
    if prune:
        await conn.execute(
            delete(channel_deliveries).where(
                channel_deliveries.c.attempted_at < now - timedelta(days=DELIVERY_LOG_DAYS)
            )
        )
