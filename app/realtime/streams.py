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
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from app.db import tenancy
from app.domain.errors import Refused
from app.realtime import codec
from app.realtime.config import RealtimeSettings
from app.realtime.hub import Hub, Mailbox, ResyncNeeded
from app.realtime.limits import check_codes
from app.services import catalog_read, channels, queries
from app.services.context import Ctx
from app.services.views import AvailabilityView, StockLevelView

V = TypeVar("V", AvailabilityView, StockLevelView)
T = TypeVar("T")

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

    def __init__(
        self,
        read: Callable[[list[str]], Awaitable[list[V]]],
        key_of: Callable[[V], str],
        idle: Callable[[_SnapshotBatcher[V]], None] | None = None,
    ) -> None:
        self._read: Callable[[list[str]], Awaitable[list[V]]] = read
        self._key_of: Callable[[V], str] = key_of
        # called when no read is running or waiting: the owner may let the batcher go
        self._idle: Callable[[_SnapshotBatcher[V]], None] | None = idle
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
        try:
            await self._serve_rounds()
        finally:
            if self._idle is not None and not self._waiting:
                self._idle(self)

    async def _serve_rounds(self) -> None:
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
    """Every subscription's stream in this process.

    Memory follows the subscribers: per kind (availability per channel, stock levels) a decoder
    exists while a stream of that kind is open, a snapshot batcher while a read is running, and the
    hub indexes only codes that exist (codes naming nothing are dropped once the first read shows
    it). `sizes()` is all zeros once every subscriber has left.
    """

    def __init__(self, ctx: Ctx, hub: Hub, settings: RealtimeSettings | None = None) -> None:
        self.ctx = ctx
        self.hub = hub
        self.settings = settings or RealtimeSettings()
        # per kind: the shared decoder and how many open streams use it
        self._decoders: dict[str, tuple[_SharedDecoder[Any], int]] = {}
        # per (tenant, channel; None: all active locations), while a read runs: concurrent snapshot
        # reads share queries (of one tenant: each read runs as that tenant)
        self._snapshots: dict[tuple[int | None, str | None], _SnapshotBatcher[AvailabilityView]] = {}

    def sizes(self) -> dict[str, int]:
        return {"decoders": len(self._decoders), "snapshot_batchers": len(self._snapshots)}

    def availability(
        self, sku_codes: list[str] | None, channel_code: str | None = None
    ) -> AsyncGenerator[AvailabilityView, None]:
        """Raises LimitExceeded (a ValueError) at once (before subscribing) for too many codes.
        The stream is the current tenant's (app/db/tenancy.py), whoever iterates it."""
        return self.availability_as(_same, sku_codes, channel_code)

    def availability_as(
        self, wrap: Callable[[AvailabilityView], T], sku_codes: list[str] | None, channel_code: str | None = None
    ) -> AsyncGenerator[T, None]:
        """`availability`, yielding `wrap(view)` (the subscription's GraphQL object: no stream of its own
        around this one, which would cost every subscriber an async generator and a hop per message)."""
        self._check_codes("skuCodes", sku_codes)
        codes = _unique(sku_codes)
        tenant_id = tenancy.current()
        kind = codec.availability_kind(channel_code, tenant_id)
        narrowed = False

        async def subscribe() -> Mailbox:
            return self.hub.subscribe(kind, set(codes) if codes is not None else None)

        async def snapshot(mailbox: Mailbox, seen: Iterable[str]) -> list[AvailabilityView]:
            nonlocal codes, narrowed
            wanted = codes if codes is not None else sorted(seen)
            if not wanted:
                if channel_code is not None:
                    with tenancy.acting_for(tenant_id):  # even for no SKUs: an unknown channel is an error
                        await self._check_channel(channel_code)
                return []
            views = await self._snapshots_of(tenant_id, channel_code).read(wanted)
            if codes is not None and not narrowed:
                # a code that names no SKU costs nothing from here on (a SKU made later needs a new subscription)
                narrowed = True
                found = {v.sku_code for v in views}
                if len(found) < len(codes):
                    self.hub.narrow(mailbox, found)
                    codes = [c for c in codes if c in found]
            return views

        def key_of(v: AvailabilityView) -> str:
            return v.sku_code

        decode, to_data = codec.availability_from_data, codec.availability_to_data
        return self._watch(Watch(self, kind, decode, subscribe, snapshot, key_of, to_data, wrap))

    def _snapshots_of(self, tenant_id: int | None, channel_code: str | None) -> _SnapshotBatcher[AvailabilityView]:
        slot = (tenant_id, channel_code)
        batcher = self._snapshots.get(slot)
        if batcher is None:

            async def read(codes: list[str]) -> list[AvailabilityView]:
                with tenancy.acting_for(tenant_id):
                    return await self._read_availability(codes, channel_code)

            def idle(done: _SnapshotBatcher[AvailabilityView]) -> None:
                if self._snapshots.get(slot) is done:
                    del self._snapshots[slot]

            batcher = self._snapshots[slot] = _SnapshotBatcher(read, lambda v: v.sku_code, idle)
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
        """Raises LimitExceeded (a ValueError) at once (before subscribing) for too many codes."""
        return self.stock_levels_as(_same, sku_codes, location_codes)

    def stock_levels_as(
        self, wrap: Callable[[StockLevelView], T], sku_codes: list[str] | None, location_codes: list[str] | None
    ) -> AsyncGenerator[T, None]:
        """`stock_levels`, yielding `wrap(level)` (see `availability_as`)."""
        self._check_codes("skuCodes", sku_codes)
        self._check_codes("locationCodes", location_codes)
        skus, locs = _unique(sku_codes), _unique(location_codes)
        tenant_id = tenancy.current()
        kind = codec.stock_level_kind(tenant_id)

        async def subscribe() -> Mailbox:
            nonlocal skus, locs
            # only codes that exist are watched: unknown ones would each cost an index entry (or, as
            # pairs, codes x codes of them) for the life of the subscription
            if skus:
                skus = [v.sku_code for v in await self._snapshots_of(tenant_id, None).read(skus)]
            if locs:
                with tenancy.acting_for(tenant_id):
                    locs = [loc.code for loc in await catalog_read.locations(self.ctx, locs)]
            if skus is not None and locs is not None and len(skus) * len(locs) <= _MAX_EXACT_PAIRS:
                exact = {codec.stock_level_key(s, loc) for s in skus for loc in locs}
                return self.hub.subscribe(kind, exact)
            sku_set, loc_set = set(skus or ()), set(locs or ())
            any_sku, any_loc = skus is None, locs is None

            def wanted(key: str) -> bool:
                sku, loc = codec.split_stock_level_key(key)
                return (any_sku or sku in sku_set) and (any_loc or loc in loc_set)

            return self.hub.subscribe(kind, None, match=wanted)

        async def snapshot(_: Mailbox, seen: Iterable[str]) -> list[StockLevelView]:
            with tenancy.acting_for(tenant_id):
                return await read_levels(seen)

        async def read_levels(seen: Iterable[str]) -> list[StockLevelView]:
            if skus is None and locs is None:
                # everything: no initial state, and a resync re-reads only what this stream has sent
                keys = set(seen)
                seen_skus = sorted({codec.split_stock_level_key(k)[0] for k in keys})
                rows = await _all_levels(self.ctx, seen_skus, None)
                return [r for r in rows if codec.stock_level_key(r.sku_code, r.location_code) in keys]
            if locs is not None and not locs:
                return []
            return await _all_levels(self.ctx, skus, locs)

        def key_of(v: StockLevelView) -> str:
            return codec.stock_level_key(v.sku_code, v.location_code)

        decode, to_data = codec.level_from_data, codec.level_to_data
        return self._watch(Watch(self, kind, decode, subscribe, snapshot, key_of, to_data, wrap))

    def _check_codes(self, name: str, codes: list[str] | None) -> None:
        check_codes(name, codes, self.settings.max_codes_per_subscription)

    def use_decoder(self, kind: str, decode: Callable[[dict[str, Any]], V]) -> _SharedDecoder[V]:
        """The shared decoder of `kind`, for one more open watch (give it back with `drop_decoder`)."""
        held = self._decoders.get(kind)
        decoder: _SharedDecoder[V] = held[0] if held is not None else _SharedDecoder(kind, decode)
        self._decoders[kind] = (decoder, (held[1] if held is not None else 0) + 1)
        return decoder

    def drop_decoder(self, kind: str) -> None:
        decoder, users = self._decoders[kind]
        if users > 1:
            self._decoders[kind] = (decoder, users - 1)
        else:
            del self._decoders[kind]

    def _watch(self, watch: Watch[V, T]) -> AsyncGenerator[T, None]:
        if LEAN.get():
            # the lean websocket path (app/realtime/lean.py) drives the watch itself: no stream
            return watch  # type: ignore[return-value]
        return _stream(watch)


# Set by the lean websocket path (app/realtime/lean.py) in the task that resolves a subscription's root
# field: the resolver then hands back the `Watch` itself, not a stream around it.
LEAN: ContextVar[bool] = ContextVar("stockwire_lean_subscription", default=False)


class Watch(Generic[V, T]):
    """One subscriber's watch: the current state, then every change, versions strictly increasing and
    content changed; everything it holds in the process is given back by `close()`.

    Driven either by `_stream` (an async generator, Strawberry's path) or, without any generator or
    task while idle, by the lean websocket path (app/realtime/lean.py): both apply the same rules here.
    """

    __slots__ = (
        "_decoder",
        "_key_of",
        "_snapshot",
        "_subscribe",
        "_to_data",
        "closed",
        "decode",
        "kind",
        "mailbox",
        "sent",
        "streams",
        "wrap",
    )

    def __init__(
        self,
        streams: Streams,
        kind: str,
        decode: Callable[[dict[str, Any]], V],
        subscribe: Callable[[], Awaitable[Mailbox]],
        snapshot: Callable[[Mailbox, Iterable[str]], Awaitable[list[V]]],
        key_of: Callable[[V], str],
        to_data: Callable[[V], dict[str, Any]],
        wrap: Callable[[V], T],
    ) -> None:
        self.streams = streams
        self.kind = kind
        self.decode: Callable[[dict[str, Any]], V] = decode
        self._subscribe = subscribe
        self._snapshot: Callable[[Mailbox, Iterable[str]], Awaitable[list[V]]] = snapshot
        self._key_of: Callable[[V], str] = key_of
        self._to_data: Callable[[V], dict[str, Any]] = to_data
        self.wrap: Callable[[V], T] = wrap
        self._decoder: _SharedDecoder[V] | None = None
        self.mailbox: Mailbox | None = None
        # per key: the last version this subscriber has, and the figures it was last shown
        self.sent: dict[str, tuple[int, codec.Content]] = {}
        self.closed = False

    def __aiter__(self) -> Watch[V, T]:
        # graphql-core accepts a subscription's source only if it looks async-iterable; the lean path
        # never iterates it
        raise TypeError("a lean watch is driven by app/realtime/lean.py, not iterated")

    async def start(self) -> list[V]:
        """Subscribe, then read the current state (what to send first)."""
        self._decoder = self.streams.use_decoder(self.kind, self.decode)
        mailbox = self.mailbox = await self._subscribe()
        if self.closed:  # closed while subscribing
            self.streams.hub.unsubscribe(mailbox)
            return []
        # subscribed before reading, so a change committed meanwhile is in the mailbox, not lost
        return self._from_snapshot(mailbox, await self._snapshot(mailbox, ()))

    async def resync(self) -> list[V]:
        """Messages may have been lost while the broadcast was down: the truth, re-read."""
        assert self.mailbox is not None
        return self._from_snapshot(self.mailbox, await self._snapshot(self.mailbox, list(self.sent)))

    def accept(self, key: str, version: int, data: dict[str, Any]) -> V | None:
        """The view to send for a message from the mailbox, or None (old, or nothing visible changed)."""
        assert self._decoder is not None and self.mailbox is not None
        view, content = self._decoder(key, version, data)
        return view if self._news(self.mailbox, key, version, content) else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        streams = self.streams
        if self.mailbox is not None:
            streams.hub.unsubscribe(self.mailbox)
        if self._decoder is not None:
            streams.drop_decoder(self.kind)

    def _news(self, mailbox: Mailbox, key: str, version: int, content: codec.Content) -> bool:
        last = self.sent.get(key)
        if last is not None and version <= last[0]:
            return False
        self.sent[key] = (version, content)
        mailbox.mark_delivered(key, version)
        return last is None or last[1] != content

    def _from_snapshot(self, mailbox: Mailbox, views: list[V]) -> list[V]:
        kind, key_of, to_data = self.kind, self._key_of, self._to_data
        return [v for v in views if self._news(mailbox, key_of(v), v.version, codec.content(kind, to_data(v)))]


async def _stream(watch: Watch[V, T]) -> AsyncGenerator[T, None]:
    """One subscriber's stream (Strawberry's path). One async generator per subscriber, not one per
    layer: each costs memory for every idle subscriber and a hop for every message."""
    wrap = watch.wrap
    try:
        for view in await watch.start():
            yield wrap(view)
        mailbox = watch.mailbox
        assert mailbox is not None
        while True:
            try:
                async for key, version, data in mailbox:
                    changed = watch.accept(key, version, data)
                    if changed is not None:
                        yield wrap(changed)
                return  # mailbox closed: the hub stopped
            except ResyncNeeded:
                for view in await watch.resync():
                    yield wrap(view)
    finally:
        watch.close()


def _same(view: V) -> V:
    return view


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
