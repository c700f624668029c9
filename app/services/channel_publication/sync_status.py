"""What each channel's endpoint was last told, against what it should show now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import channel_locations, channel_publications, skus, stock_levels
from app.domain.errors import ErrorCode, Refused, UserError
from app.services import channels as channel_service
from app.services.context import Ctx

cp = channel_publications
BATCH = 100  # SKUs per push; reads go in pages of five pushes


@dataclass(frozen=True, slots=True)
class PublicationStatus:
    channel_code: str
    sku_code: str
    acked_version: int | None
    acked_available: int | None
    acked_at: datetime | None
    current_version: int
    current_available: int
    attempts: int
    last_error: str | None

    @property
    def in_sync(self) -> bool:
        """The endpoint shows what it should. A version that moved without changing the figure is no news
        (the relay does not publish it either), so it is not pushed on its own."""
        return self.acked_version is not None and self.acked_available == self.current_available


async def _sku_codes(conn: AsyncConnection, channel_id: int) -> list[str]:
    """SKUs the channel can show: stocked at its locations, or told to the endpoint before."""
    stocked = (
        select(stock_levels.c.sku_id)
        .join(channel_locations, channel_locations.c.location_id == stock_levels.c.location_id)
        .where(channel_locations.c.channel_id == channel_id)
    )
    told = select(cp.c.sku_id).where(cp.c.channel_id == channel_id)
    rows = await conn.execute(
        select(skus.c.code).where(or_(skus.c.id.in_(stocked), skus.c.id.in_(told))).order_by(skus.c.code)
    )
    return [r.code for r in rows]


async def status(ctx: Ctx, channel_code: str) -> list[PublicationStatus]:
    async with ctx.db.read() as conn:
        channel = await channel_service.channel_row(conn, channel_code)
        if channel is None:
            raise Refused([UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {channel_code!r}", ("channelCode",))])
        return await _status(conn, channel, ctx.clock())


async def _status(
    conn: AsyncConnection, channel: Any, now: datetime, only: list[str] | None = None
) -> list[PublicationStatus]:
    """Per SKU (all the channel can show, or `only` these): what was acknowledged and what is true now."""
    codes = await _sku_codes(conn, channel.id) if only is None else sorted(only)
    views: list[channel_service.ChannelAvailabilityView] = []
    # in pages: a statement's parameter count stays bounded however large the catalogue (Postgres: 32767)
    for start in range(0, len(codes), BATCH * 5):
        views += await channel_service.availability_in(conn, channel.code, codes[start : start + BATCH * 5], now)
    told = select(cp, skus.c.code).join(skus, skus.c.id == cp.c.sku_id).where(cp.c.channel_id == channel.id)
    acked: dict[str, Any] = {}
    for start in range(0, len(codes), BATCH * 5):
        page = codes[start : start + BATCH * 5]
        acked |= {r.code: r for r in await conn.execute(told.where(skus.c.code.in_(page)))}
    out = []
    for v in views:
        a = acked.get(v.sku_code)
        out.append(
            PublicationStatus(
                channel_code=channel.code,
                sku_code=v.sku_code,
                acked_version=None if a is None or a.acked_version is None else int(a.acked_version),
                acked_available=None if a is None or a.acked_available is None else int(a.acked_available),
                acked_at=None if a is None else a.acked_at,
                current_version=v.version,
                current_available=v.available,
                attempts=0 if a is None else int(a.attempts),
                last_error=None if a is None else a.last_error,
            )
        )
    return out
