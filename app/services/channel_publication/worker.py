"""The publication worker: one per process, pushing the channels whose advisory lock it holds.

One publisher per channel across the fleet: every process runs a worker, but a channel is pushed only
by the process holding its PostgreSQL advisory lock (`pg_try_advisory_lock(LOCK_NAMESPACE, channel
id)`, session-level, on one connection the worker keeps); see the package docstring for takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import channel_publications, channels, skus
from app.observability.metrics import PUBLICATION_ITEMS, PUBLICATION_PUSHES, PUBLICATION_SECONDS
from app.realtime import codec
from app.realtime.hub import Hub, Mailbox, ResyncNeeded
from app.services import demand
from app.services.channel_publication import push
from app.services.channel_publication.delivery_log import DELIVERED, FAILED, log_attempt
from app.services.channel_publication.sync_status import BATCH, PublicationStatus, _status
from app.services.context import Ctx

log = logging.getLogger("stockwire.publication")
cp = channel_publications
LOCK_NAMESPACE = 0x5354_5057  # the first key of pg_try_advisory_lock(int, int): ours, whatever else uses locks


class PublicationWorker:
    """One per process; for each channel only the holder of its advisory lock pushes (module docstring).

    What to push is found two ways. With a hub, the worker follows each endpoint channel's
    availability changes (the relay publishes them for every process) and compares only the SKUs that
    moved, plus those whose retry is due. And every `full_scan_seconds`, or after the hub may have lost
    messages, it compares every SKU the channel can show: the safety net that makes a lost message
    cost a delay, never a wrong figure left standing. Without a hub every pass is a full scan.
    """

    def __init__(
        self,
        ctx: Ctx,
        hub: Hub | None = None,
        interval: float = 0.5,
        full_scan_seconds: float = 60.0,
        backoff_base: float = 0.2,
        backoff_max: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.ctx = ctx
        self.hub = hub
        self.interval = interval
        self.full_scan_seconds = full_scan_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._following: dict[str, tuple[Mailbox, asyncio.Task[None]]] = {}  # by channel code
        self._moved: dict[str, set[str]] = defaultdict(set)  # SKU codes per channel code
        self._rescan: set[str] = set()  # channel codes to compare in full at the next pass
        self._scanned_at: dict[str, float] = {}
        self._endpoint_of: dict[str, str] = {}  # the endpoint each channel was last published to
        self.publisher = f"{socket.gethostname()}:{os.getpid()}"
        self._lock_conn: AsyncConnection | None = None  # holds this process's channel locks (PostgreSQL)
        self._held: dict[int, str] = {}  # channel id -> code, channels this process publishes
        self._candidates: dict[int, str] = {}  # channels with an endpoint, at the last pass
        self._behind_since: dict[str, float] = {}  # when the channel's endpoint fell behind (lag)
        self._pruned_at = -math.inf

    def leadership(self) -> dict[str, bool]:
        """Per channel with an endpoint: whether this process publishes it."""
        return {code: cid in self._held for cid, code in self._candidates.items()}

    def lag_seconds(self) -> dict[str, float]:
        """Per channel this process publishes: seconds its endpoint has been behind (0: in sync)."""
        now = time.monotonic()
        return {
            code: now - self._behind_since[code] if code in self._behind_since else 0.0 for code in self._held.values()
        }

    async def _elect(self, targets: list[Any]) -> list[Any]:
        """The channels this process publishes: it holds (or now takes) their advisory locks."""
        self._candidates = {t.id: t.code for t in targets}
        if not targets:
            # nothing to publish: no lock to hold, and no connection kept out of the pool the requests
            # share (it held one of every process's connections even with no channel to publish)
            await self._release_locks()
            return []
        try:
            if self._lock_conn is None:
                conn = await self.ctx.db.engine.connect()
                # session-level locks, outside any transaction: held until released or the connection ends
                self._lock_conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            conn = self._lock_conn
            for cid in set(self._held) - set(self._candidates):
                await conn.execute(text("SELECT pg_advisory_unlock(:ns, :id)"), {"ns": LOCK_NAMESPACE, "id": cid})
                del self._held[cid]
            for t in targets:
                if t.id in self._held:
                    continue
                got = await conn.scalar(
                    text("SELECT pg_try_advisory_lock(:ns, :id)"), {"ns": LOCK_NAMESPACE, "id": t.id}
                )
                if got:
                    log.info("publishing channel %s from this process (%s)", t.code, self.publisher)
                    self._held[t.id] = t.code
                    self._rescan.add(t.code)  # taken over: compare everything with what was acknowledged
            # proves the connection (so the locks) still lives; a lost one is noticed at the next pass
            await conn.execute(text("SELECT 1"))
        except Exception:
            await self._release_locks()
            raise
        return [t for t in targets if t.id in self._held]

    async def _release_locks(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()  # closes it: PostgreSQL releases every lock it held
            with contextlib.suppress(Exception):
                await conn.close()

    def poke(self) -> None:
        """Look for changes now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        try:
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
                    # changes arrive in bursts: gather them a moment, then wait for more or for the poll
                    await asyncio.sleep(min(self.interval, 0.05))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self._wake.wait()
        finally:
            for code in list(self._following):
                self._unfollow(code)
            await asyncio.shield(self._release_locks())

    def _follow(self, code: str) -> None:
        if self.hub is None or code in self._following:
            return
        mailbox = self.hub.subscribe(codec.availability_kind(code), None)
        self._following[code] = (mailbox, asyncio.create_task(self._collect(code, mailbox)))
        self._rescan.add(code)  # what happened before we listened: compare everything once

    def _unfollow(self, code: str) -> None:
        mailbox, task = self._following.pop(code)
        task.cancel()
        if self.hub is not None:
            self.hub.unsubscribe(mailbox)
        self._moved.pop(code, None)

    async def _collect(self, code: str, mailbox: Mailbox) -> None:
        while True:
            try:
                async for sku_code, _, _ in mailbox:
                    self._moved[code].add(sku_code)
                    self._wake.set()
                return  # the hub stopped
            except ResyncNeeded:
                self._rescan.add(code)  # messages may have been lost
                self._wake.set()

    async def publish_once(self, client: httpx.AsyncClient) -> int:
        """One pass over every channel with an endpoint. Returns how many SKU values were acknowledged."""
        async with self.ctx.db.read() as conn:
            targets = list(
                await conn.execute(select(channels).where(channels.c.endpoint_url.is_not(None)).order_by(channels.c.id))
            )
        targets = await self._elect(targets)
        for code in set(self._following) - {t.code for t in targets}:
            self._unfollow(code)  # published elsewhere (or no endpoint): another process follows it
        for code in set(self._behind_since) - {t.code for t in targets}:
            del self._behind_since[code]
        acked = 0
        for channel in targets:
            self._follow(channel.code)
            if self._endpoint_of.get(channel.code) != channel.endpoint_url:
                # a new endpoint is told everything, not only what moves from now on
                self._endpoint_of[channel.code] = channel.endpoint_url
                self._rescan.add(channel.code)
            clock = time.monotonic()
            only: set[str] | None
            if (
                self.hub is None
                or channel.code in self._rescan
                or clock - self._scanned_at.get(channel.code, -math.inf) >= self.full_scan_seconds
            ):
                # taken before reading, so a change that lands meanwhile is looked at again next pass
                self._rescan.discard(channel.code)
                self._moved.pop(channel.code, None)
                self._scanned_at[channel.code] = clock
                only = None
            else:
                only = self._moved.pop(channel.code, set())
            acked += await self._publish_channel(client, channel, only)
        return acked

    async def _publish_channel(self, client: httpx.AsyncClient, channel: Any, only: set[str] | None) -> int:
        """Push what differs from what the endpoint acknowledged: every SKU, or `only` these and due retries."""
        now = self.ctx.clock()
        async with self.ctx.db.read() as conn:
            # the row again, in the read the figures come from: its endpoint and secret go with them
            seen_endpoint = channel.endpoint_url
            channel = (await conn.execute(select(channels).where(channels.c.id == channel.id))).first()
            if channel is None or channel.endpoint_url is None:
                return 0
            if channel.endpoint_url != seen_endpoint:
                only = None  # the endpoint changed since the pass began: it gets everything
                self._endpoint_of[channel.code] = channel.endpoint_url
            if only is not None:
                retries = select(skus.c.code).join(cp, cp.c.sku_id == skus.c.id)
                only |= set(
                    await conn.scalars(retries.where(cp.c.channel_id == channel.id, cp.c.next_attempt_at <= now))
                )
                if not only:
                    self._behind_since.pop(channel.code, None)
                    return 0
            current = await _status(conn, channel, now, None if only is None else sorted(only))
            waiting = {
                r.code
                for r in await conn.execute(
                    select(skus.c.code)
                    .join(cp, cp.c.sku_id == skus.c.id)
                    .where(cp.c.channel_id == channel.id, cp.c.next_attempt_at > now)
                )
            }
            due = [s for s in current if not s.in_sync and s.sku_code not in waiting]
            ids = {
                r.code: r.id
                for r in await conn.execute(
                    select(skus.c.code, skus.c.id).where(skus.c.code.in_([s.sku_code for s in due[: BATCH * 5]]))
                )
            }
        # beyond one read's worth, and behind a failing batch: looked at again at the next pass
        later = {s.sku_code for s in due if s.sku_code not in ids}
        due = [s for s in due if s.sku_code in ids]
        if due or later:
            self._behind_since.setdefault(channel.code, time.monotonic())
        else:
            self._behind_since.pop(channel.code, None)
        acked = 0
        for start in range(0, len(due), BATCH):
            batch = due[start : start + BATCH]
            content = push.body(channel, now, batch)
            headers = push.headers(channel, self.publisher, content)
            error: str | None = None
            attempted_at, started = self.ctx.clock(), time.perf_counter()
            try:
                response = await client.post(channel.endpoint_url, content=content, headers=headers)
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - started
            PUBLICATION_PUSHES.labels(channel.code, "delivered" if error is None else "failed").inc()
            PUBLICATION_SECONDS.labels(channel.code).observe(latency)
            attempt = {
                "channel_id": channel.id,
                "attempted_at": attempted_at,
                "items": len(batch),
                "min_version": min(s.current_version for s in batch),
                "max_version": max(s.current_version for s in batch),
                "status": DELIVERED if error is None else FAILED,
                "latency_ms": round(latency * 1000),
                "error": None if error is None else error[:500],
                "publisher": self.publisher,
            }
            await self._record(channel.id, channel.endpoint_url, [(ids[s.sku_code], s) for s in batch], error, attempt)
            await demand.note_push(self.ctx, channel.id, now, error is None)  # issue 18: measured sync lag
            if error is None:
                acked += len(batch)
                PUBLICATION_ITEMS.labels(channel.code).inc(len(batch))
            else:
                later |= {s.sku_code for s in due[start + BATCH :]}  # the failed batch is in backoff
                break  # the endpoint is failing: no point sending it the rest now
        if later:
            self._moved[channel.code] |= later
            self._wake.set()
        return acked

    async def _record(
        self,
        channel_id: int,
        url: str,
        batch: list[tuple[int, PublicationStatus]],
        error: str | None,
        attempt: dict[str, Any],
    ) -> None:
        now = self.ctx.clock()
        prune = time.monotonic() - self._pruned_at >= 3600
        if prune:
            self._pruned_at = time.monotonic()

        async def work(conn: AsyncConnection) -> None:
            await log_attempt(conn, attempt, now, prune)  # whatever came of it
            # An answer counts only if the channel still points where it came from. FOR SHARE queues
            # behind an upsert that changes the endpoint (it updates this row, then forgets what the old
            # endpoint was told): either that upsert comes first and this answer is dropped, or it
            # comes after and forgets this record too.
            endpoint = select(channels.c.endpoint_url).where(channels.c.id == channel_id).with_for_update(read=True)
            if await conn.scalar(endpoint) != url:
                return
            rows = [{"channel_id": channel_id, "sku_id": sku_id, "attempts": 0} for sku_id, _ in batch]
            await conn.execute(postgresql.insert(cp).on_conflict_do_nothing(), rows)
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
