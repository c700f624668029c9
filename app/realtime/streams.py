"""Subscription streams: the current state first, then every change, versions strictly increasing.

One stream per subscription, fed by the process's Hub (one broadcast subscription for all of them).
A stream never yields a version at or below one it already yielded for that key, so a client can
drop nothing and still tell when it skipped intermediate states; and it never yields a message whose
figures equal the last it yielded for that key (a version that moved without changing anything the
subscriber can see is news to nobody).

Fan-out cost: a message arrives once per process (the Hub), is decoded into a read model once per
process (`_SharedDecoder`), and each stream only compares versions and content before handing the
shared object on; what remains per subscriber is Strawberry's execution of the selection set.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from app.domain.errors import Refused
from app.realtime import codec
from app.realtime.config import RealtimeSettings
from app.realtime.hub import Hub, Mailbox, ResyncNeeded
from app.services import channels, queries
from app.services.context import Ctx
from app.services.views import AvailabilityView, StockLevelView

V = TypeVar("V", AvailabilityView, StockLevelView)

# Decoded messages kept per process; only the latest version per key is ever useful.
_DECODED_KEYS = 10_000
# Beyond this many (sku, location) pairs a stock-level subscription filters instead of indexing keys.
_MAX_EXACT_PAIRS = 10_000


class UnknownChannelError(ValueError):
    """The subscription named a channel this service does not know."""


class _SharedDecoder(Generic[V]):
    """Decode each (key, version) once per process, whichever subscriber asks first."""

    def __init__(self, kind: str, decode: Callable[[dict[str, Any]], V], size: int = _DECODED_KEYS) -> None:
        self.kind = kind
        self._decode: Callable[[dict[str, Any]], V] = decode
        self._size = size
        self._cache: OrderedDict[str, tuple[int, V, codec.Content]] = OrderedDict()

    def __call__(self, key: str, version: int, data: dict[str, Any]) -> tuple[V, codec.Content]:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        view, content = self._decode(data), codec.content(self.kind, data)
        if hit is None or hit[0] < version:
            self._cache[key] = (version, view, content)
            self._cache.move_to_end(key)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return view, content


class _SnapshotBatcher(Generic[V]):
    """Concurrent snapshot reads of one kind become one query per page of distinct codes.

    Thousands of subscribers arriving together (a deploy, a reconnect storm, every stream resyncing
    after a Redis outage) would otherwise each hold a pooled connection for the same few rows and
    time out waiting for the pool. Requests that arrive while a read is running wait for the next
    one, which serves all of them: no added delay when idle, one read per round under load.
    """

    def __init__(self, read: Callable[[list[str]], Awaitable[list[V]]], key_of: Callable[[V], str]) -> None:
        self._read: Callable[[list[str]], Awaitable[list[V]]] = read
        self._key_of: Callable[[V], str] = key_of
        self._waiting: list[tuple[list[str], asyncio.Future[list[V]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def read(self, codes: list[str]) -> list[V]:
        """The current views of `codes`, in that order (codes that match nothing are left out)."""
        future: asyncio.Future[list[V]] = asyncio.get_running_loop().create_future()
        self._waiting.append((codes, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._serve(), name="stockwire-snapshot-reads")
        return await future

    async def _serve(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let the requests of this loop iteration join the round
            batch, self._waiting = self._waiting, []
            batch = [(codes, f) for codes, f in batch if not f.done()]  # a cancelled subscriber
            wanted = list(dict.fromkeys(code for codes, _ in batch for code in codes))
            try:
                found: dict[str, V] = {}
                for start in range(0, len(wanted), queries.MAX_PAGE):
                    for view in await self._read(wanted[start : start + queries.MAX_PAGE]):
                        found[self._key_of(view)] = view
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for codes, future in batch:
                if not future.done():
                    future.set_result([found[c] for c in codes if c in found])


class Streams:
    def __init__(self, ctx: Ctx, hub: Hub, settings: RealtimeSettings | None = None) -> None:
        self.ctx = ctx
        self.hub = hub
        self.settings = settings or RealtimeSettings()
        self._availability: dict[str, _SharedDecoder[AvailabilityView]] = {}
        self._levels = _SharedDecoder(codec.STOCK_LEVEL, codec.level_from_data)
        # per channel (None: all active locations): concurrent snapshot reads share queries
        self._snapshots: dict[str | None, _SnapshotBatcher[AvailabilityView]] = {}

    def availability(
        self, sku_codes: list[str] | None, channel_code: str | None = None
    ) -> AsyncGenerator[AvailabilityView, None]:
        """Raises ValueError at once (before subscribing) for a bad argument."""
        self._check_codes("skuCodes", sku_codes)
        codes = _unique(sku_codes)
        kind = codec.availability_kind(channel_code)
        decoder = self._availability.get(kind)
        if decoder is None:
            decoder = self._availability[kind] = _SharedDecoder(kind, codec.availability_from_data)
        mailbox = self.hub.subscribe(kind, set(codes) if codes is not None else None)

        async def snapshot(seen: Iterable[str]) -> list[AvailabilityView]:
            wanted = codes if codes is not None else sorted(seen)
            if not wanted:
                if channel_code is not None:
                    await self._check_channel(channel_code)  # even for no SKUs: an unknown channel is an error
                return []
            return await self._snapshots_of(channel_code).read(wanted)

        def key_of(v: AvailabilityView) -> str:
            return v.sku_code

        return _stream(self.hub, mailbox, snapshot, decoder, key_of, codec.availability_to_data)

    def _snapshots_of(self, channel_code: str | None) -> _SnapshotBatcher[AvailabilityView]:
        batcher = self._snapshots.get(channel_code)
        if batcher is None:

            async def read(codes: list[str]) -> list[AvailabilityView]:
                return await self._read_availability(codes, channel_code)

            batcher = self._snapshots[channel_code] = _SnapshotBatcher(read, lambda v: v.sku_code)
        return batcher

    async def _read_availability(self, codes: list[str], channel_code: str | None) -> list[AvailabilityView]:
        if channel_code is None:
            return await queries.availability(self.ctx, codes)
        try:
            return list(await channels.availability(self.ctx, channel_code, codes))
        except Refused as refused:
            raise UnknownChannelError(refused.errors[0].message) from None

    async def _check_channel(self, channel_code: str) -> None:
        async with self.ctx.db.read() as conn:
            if await channels.channel_row(conn, channel_code) is None:
                raise UnknownChannelError(f"no channel {channel_code!r}")

    def stock_levels(
        self, sku_codes: list[str] | None, location_codes: list[str] | None
    ) -> AsyncGenerator[StockLevelView, None]:
        """Raises ValueError at once (before subscribing) for a bad argument."""
        self._check_codes("skuCodes", sku_codes)
        self._check_codes("locationCodes", location_codes)
        skus, locs = _unique(sku_codes), _unique(location_codes)
        if skus is not None and locs is not None and len(skus) * len(locs) <= _MAX_EXACT_PAIRS:
            exact = {codec.stock_level_key(s, loc) for s in skus for loc in locs}
            mailbox = self.hub.subscribe(codec.STOCK_LEVEL, exact)
        else:
            sku_set, loc_set = set(skus or ()), set(locs or ())

            def wanted(key: str) -> bool:
                sku, loc = codec.split_stock_level_key(key)
                return (skus is None or sku in sku_set) and (locs is None or loc in loc_set)

            mailbox = self.hub.subscribe(codec.STOCK_LEVEL, None, match=wanted)

        async def snapshot(seen: Iterable[str]) -> list[StockLevelView]:
            if skus is None and locs is None:
                # everything: no initial state, and a resync re-reads only what this stream has sent
                keys = set(seen)
                seen_skus = sorted({codec.split_stock_level_key(k)[0] for k in keys})
                rows = await _all_levels(self.ctx, seen_skus, None)
                return [r for r in rows if codec.stock_level_key(r.sku_code, r.location_code) in keys]
            return await _all_levels(self.ctx, skus, locs)

        def key_of(v: StockLevelView) -> str:
            return codec.stock_level_key(v.sku_code, v.location_code)

        return _stream(self.hub, mailbox, snapshot, self._levels, key_of, codec.level_to_data)

    def _check_codes(self, name: str, codes: list[str] | None) -> None:
        limit = self.settings.max_codes_per_subscription
        if codes is not None and len(codes) > limit:
            raise ValueError(f"{name}: at most {limit} codes per subscription, got {len(codes)}")


def _unique(codes: list[str] | None) -> list[str] | None:
    return None if codes is None else list(dict.fromkeys(codes))


async def _all_levels(ctx: Ctx, skus: list[str] | None, locs: list[str] | None) -> list[StockLevelView]:
    """Every matching position, page by page (a snapshot must not stop at one page)."""
    if skus is not None and not skus:
        return []
    rows: list[StockLevelView] = []
    after: tuple[str, str] | None = None
    while True:
        page = await queries.stock_levels_page(ctx, skus, locs, queries.MAX_PAGE, after)
        rows += page
        if len(page) < queries.MAX_PAGE:
            return rows
        after = (page[-1].sku_code, page[-1].location_code)


async def _stream(
    hub: Hub,
    mailbox: Mailbox,
    snapshot: Callable[[Iterable[str]], Awaitable[list[V]]],
    decode: _SharedDecoder[V],
    key_of: Callable[[V], str],
    to_data: Callable[[V], dict[str, Any]],
) -> AsyncGenerator[V, None]:
    # per key: the last version this subscriber has, and the figures it was last shown
    sent: dict[str, tuple[int, codec.Content]] = {}

    def news(key: str, version: int, content: codec.Content) -> bool:
        last = sent.get(key)
        if last is not None and version <= last[0]:
            return False
        sent[key] = (version, content)
        mailbox.mark_delivered(key, version)
        return last is None or last[1] != content

    def from_snapshot(views: list[V]) -> list[V]:
        return [v for v in views if news(key_of(v), v.version, codec.content(decode.kind, to_data(v)))]

    try:
        # subscribed before reading, so a change committed meanwhile is in the mailbox, not lost
        for view in from_snapshot(await snapshot(())):
            yield view
        while True:
            try:
                async for key, version, data in mailbox:
                    view, content = decode(key, version, data)
                    if news(key, version, content):
                        yield view
                return  # mailbox closed: the hub stopped
            except ResyncNeeded:
                # messages may have been lost while the broadcast was down: re-read the truth
                for view in from_snapshot(await snapshot(list(sent))):
                    yield view
    finally:
        hub.unsubscribe(mailbox)
