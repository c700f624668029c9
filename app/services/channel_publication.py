"""Publication: push each channel's changed availability to its endpoint, and remember what was acknowledged.

For every channel with an `endpoint_url`, a worker compares each SKU's current channel figure (and its
version) with the last version the endpoint acknowledged, and POSTs only the SKUs that moved, the
latest value of each (a SKU that changed five times since is sent once), in batches. The body is JSON,
signed with HMAC-SHA256 over the exact bytes (`X-Stockwire-Signature: sha256=<hex>`), so the endpoint
can check it came from us. A 2xx records the versions as acknowledged; anything else (or no answer)
is retried with exponential backoff. Every item carries its `version`, which only increases, so an
endpoint that keeps the highest version it has applied can never go back to an older value, however
retries and several processes interleave; our own record of acknowledgements only moves forward too.

Alerts travel in the same message: each item's figure is compared with the one the endpoint last
acknowledged (`app.domain.channel_rules.channel_alerts`), and OUT_OF_STOCK, BACK_IN_STOCK and LOW_STOCK
(below the channel's `low_stock_threshold`) are listed under `alerts`. Because the comparison is with
what was acknowledged, an alert in a failed push is raised again in its retry: delivered at least once.

Body: {"channel": "WEB", "sentAt": "...", "items": [{"sku", "available", "version"}],
       "alerts": [{"sku", "kind", "available", "previous", "version"}]}

`status` shows, per channel and SKU, what the endpoint was last told and what it should show now.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import channel_locations, channel_publications, channels, skus, stock_levels
from app.domain.channel_rules import channel_alerts
from app.domain.errors import ErrorCode, Refused, UserError
from app.services import channels as channel_service
from app.services.context import Ctx

log = logging.getLogger("stockwire.publication")
cp = channel_publications
SIGNATURE_HEADER = "X-Stockwire-Signature"
BATCH = 100


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


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
        return self.acked_version == self.current_version and self.acked_available == self.current_available


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


async def _status(conn: AsyncConnection, channel: Any, now: datetime) -> list[PublicationStatus]:
    codes = await _sku_codes(conn, channel.id)
    views: list[channel_service.ChannelAvailabilityView] = []
    # in pages: a statement's parameter count stays bounded however large the catalogue (Postgres: 32767)
    for start in range(0, len(codes), BATCH * 5):
        views += await channel_service.availability_in(conn, channel.code, codes[start : start + BATCH * 5], now)
    acked = {
        r.code: r
        for r in await conn.execute(
            select(cp, skus.c.code).join(skus, skus.c.id == cp.c.sku_id).where(cp.c.channel_id == channel.id)
        )
    }
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


class PublicationWorker:
    """One per process; several processes may run it (the endpoint keeps the highest version)."""

    def __init__(
        self,
        ctx: Ctx,
        interval: float = 0.5,
        backoff_base: float = 0.2,
        backoff_max: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.ctx = ctx
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.last_error: str | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Called after every commit in this process: look for changes now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            while True:
                self._wake.clear()
                try:
                    await self.publish_once(client)
                    self.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bad channel must not stop the others' publication
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("publication failed: %s", self.last_error)
                # at most one pass per interval (commits can be frequent); sooner than the poll when poked
                await asyncio.sleep(min(self.interval, 0.1))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()

    async def publish_once(self, client: httpx.AsyncClient) -> int:
        """One pass over every channel with an endpoint. Returns how many SKU values were acknowledged."""
        async with self.ctx.db.read() as conn:
            targets = list(
                await conn.execute(select(channels).where(channels.c.endpoint_url.is_not(None)).order_by(channels.c.id))
            )
        acked = 0
        for channel in targets:
            acked += await self._publish_channel(client, channel)
        return acked

    async def _publish_channel(self, client: httpx.AsyncClient, channel: Any) -> int:
        now = self.ctx.clock()
        async with self.ctx.db.read() as conn:
            # the row again, in the read the figures come from: its endpoint and secret go with them
            channel = (await conn.execute(select(channels).where(channels.c.id == channel.id))).first()
            if channel is None or channel.endpoint_url is None:
                return 0
            current = await _status(conn, channel, now)
            waiting = {
                r.sku_id
                for r in await conn.execute(
                    select(cp.c.sku_id).where(cp.c.channel_id == channel.id, cp.c.next_attempt_at > now)
                )
            }
            ids = {r.code: r.id for r in await conn.execute(select(skus.c.code, skus.c.id))} if current else {}
        due = [s for s in current if not s.in_sync and ids[s.sku_code] not in waiting]
        acked = 0
        for start in range(0, len(due), BATCH):
            batch = due[start : start + BATCH]
            items = [{"sku": s.sku_code, "available": s.current_available, "version": s.current_version} for s in batch]
            alerts = [
                {
                    "sku": s.sku_code,
                    "kind": kind,
                    "available": s.current_available,
                    "previous": s.acked_available,
                    "version": s.current_version,
                }
                for s in batch
                for kind in channel_alerts(s.acked_available, s.current_available, channel.low_stock_threshold)
            ]
            body = json.dumps(
                {"channel": channel.code, "sentAt": now.isoformat(), "items": items, "alerts": alerts},
                separators=(",", ":"),
            ).encode()
            headers = {"Content-Type": "application/json"}
            if channel.endpoint_secret:
                headers[SIGNATURE_HEADER] = sign(channel.endpoint_secret, body)
            error: str | None = None
            try:
                response = await client.post(channel.endpoint_url, content=body, headers=headers)
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            await self._record(channel.id, channel.endpoint_url, [(ids[s.sku_code], s) for s in batch], error)
            if error is None:
                acked += len(batch)
            else:
                break  # the endpoint is failing: the rest waits for the backoff too
        return acked

    async def _record(
        self, channel_id: int, url: str, batch: list[tuple[int, PublicationStatus]], error: str | None
    ) -> None:
        now = self.ctx.clock()

        async def work(conn: AsyncConnection) -> None:
            # An answer counts only if the channel still points where it came from. FOR SHARE queues
            # behind an upsert that changes the endpoint (it updates this row, then forgets what the old
            # endpoint was told): either that upsert comes first and this answer is dropped, or it
            # comes after and forgets this record too. (SQLite has one writer: nothing interleaves.)
            endpoint = select(channels.c.endpoint_url).where(channels.c.id == channel_id)
            if conn.dialect.name == "postgresql":
                endpoint = endpoint.with_for_update(read=True)
            if await conn.scalar(endpoint) != url:
                return
            rows = [{"channel_id": channel_id, "sku_id": sku_id, "attempts": 0} for sku_id, _ in batch]
            ins: Any = postgresql.insert(cp) if conn.dialect.name == "postgresql" else sqlite.insert(cp)
            await conn.execute(ins.on_conflict_do_nothing(), rows)
            for sku_id, s in batch:
                key = (cp.c.channel_id == channel_id) & (cp.c.sku_id == sku_id)
                if error is None:
                    # acknowledgements only move forward: a slower process acking an older version loses
                    await conn.execute(
                        update(cp)
                        .where(key, or_(cp.c.acked_version.is_(None), cp.c.acked_version < s.current_version))
                        .values(
                            acked_version=s.current_version,
                            acked_available=s.current_available,
                            acked_at=now,
                            pending_version=None,
                            attempts=0,
                            last_error=None,
                            next_attempt_at=None,
                        )
                    )
                    continue
                attempts = s.attempts + 1
                delay = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1))
                await conn.execute(
                    update(cp)
                    .where(key)
                    .values(
                        pending_version=s.current_version,
                        attempts=cp.c.attempts + 1,
                        last_error=error[:500],
                        next_attempt_at=now + timedelta(seconds=delay),
                    )
                )

        await self.ctx.db.write(work, notify=False)
