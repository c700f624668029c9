"""What the outbox relay reads and publishes for the SKUs a batch of changes touched, built cheaply.

A routed order changes ~40 positions of 20 SKUs, but each SKU's availability message carries every
location's level (~120 each here): ~2,400 levels read, turned into views, encoded into dicts and
compared per order, for ~40 that moved. That work ran in the event loop right after the order's
commit, so the next request waited behind it (bench/routing.py: routeAndReserve back to back ~5-9x its
baseline). Here each level's message dict, figures and content are kept per (tenant, sku id, location
id) with the database row they came from, and rebuilt only when that row changed: an unchanged level
costs a tuple comparison. The messages are the same as `queries.availability_and_levels` +
`codec.availability_to_data` / `codec.level_to_data` build (tests/test_realtime_relay.py compares them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg
from app.db.engine import Pair
from app.realtime import codec
from app.realtime.changes import EncodedData, dumps, json_string
from app.realtime.hub import Change
from app.services import channels as channel_service

# one level as last built: the row's values it was built from (`LevelCache.level`'s key), its message
# dict (knowing its JSON text), its content (codec.content of that dict), and its share of the
# availability (sellable units, oversold units)
_Entry = tuple[Any, EncodedData, codec.Content, int, int]

# Rows handled per turn of the event loop: a routed order's commit makes the relay go through ~2,400
# rows, milliseconds of CPU in one piece, and a request whose database answer arrived meanwhile (the
# next order, back to back: bench/routing.py) waited for all of it. In pieces, its turns come between.
_ROWS_PER_TURN = 400

# positions remembered per relay; past this the cache starts over (a miss only costs a rebuild)
_MAX_ENTRIES = 200_000


# updated_at texts remembered per relay (`LevelCache._stamps`); past this they start over
_MAX_STAMPS = 4096

# Who hears a (kind, key) now (Hub.audience); None: anyone may
Audience = Callable[[str, str], bool] | None


class LevelCache:
    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._entries: dict[tuple[int, int, int], _Entry] = {}
        self._max = max_entries
        # content of the messages built last, by id(data): the relay compares it without rebuilding
        self.contents: dict[int, codec.Content] = {}
        # the (kind, key)s of the last read that nobody heard, so no message was built: the relay
        # forgets what it last published for them (a subscriber arriving later starts from a snapshot)
        self.unheard: list[tuple[str, str]] = []
        self.rebuilt = 0  # levels built (not found unchanged): for tests and profiles
        # updated_at (naive, as read) -> its ISO text with the UTC offset: the positions one commit
        # changed share their updated_at (an ingested batch's ~500), so each is converted once
        self._stamps: dict[datetime, str] = {}

    def level(self, tenant_id: int, sku_id: int, location_id: int, r: Any) -> _Entry:
        """The level of row `r` (pg's availability columns, in their order: `_COLUMNS`)."""
        slot = (tenant_id, sku_id, location_id)
        entry = self._entries.get(slot)
        # what the level is built from: the SKU's code and the position's columns from on_hand on
        # (figures, version, timestamp, location code and active), so any of them that moved rebuilds.
        # Not the whole row: the hint path's rows (pg.claim_and_read) carry 20 columns and the drain's
        # (pg.availability_rows) 16, so a whole-row comparison never matched between the two and every
        # drain after a hinted publication rebuilt every level again (~2,400 for a routed order)
        key = (r[1], *r[6:16])
        if entry is not None and entry[0] == key:
            return entry
        self.rebuilt += 1
        (_, sku_code, _, _, _, _, on_hand, committed, reserved, unavailable, safety, incoming) = r[:12]
        version, updated_at, location_code, location_active = r[12], r[13], r[14], r[15]
        stamp = self._stamps.get(updated_at)
        if stamp is None:
            if len(self._stamps) >= _MAX_STAMPS:
                self._stamps.clear()
            stamp = self._stamps[updated_at] = pg.aware(updated_at).isoformat()
        plain = {
            "sku": sku_code,
            "loc": location_code,
            "on_hand": on_hand,
            "committed": committed,
            "reserved": reserved,
            "unavailable": unavailable,
            "safety_stock": safety,
            "incoming": incoming,
            "version": version,
            "updated_at": stamp,
            "active": location_active,
        }
        # the text dumps(plain) makes, written out: the JSON encoder's walk of the dict was most of a
        # rebuilt level's cost (an ingested batch rebuilds ~500; 7.0 -> 4.8 us per level). The figures
        # and version are NOT NULL integer columns (asyncpg gives ints), the codes are encoded once per
        # code, the timestamp's ISO text has nothing to escape (digits and "-:.+T");
        # tests/test_relay_reads.py compares the texts with json.dumps'
        if type(location_active) is bool:
            text = (
                f'{{"sku":{json_string(sku_code)},"loc":{json_string(location_code)},"on_hand":{on_hand},'
                f'"committed":{committed},"reserved":{reserved},"unavailable":{unavailable},'
                f'"safety_stock":{safety},"incoming":{incoming},"version":{version},'
                f'"updated_at":"{stamp}","active":{"true" if location_active else "false"}}}'
            )
        else:
            text = dumps(plain)
        data = EncodedData(plain)
        data.text = text
        content = (location_code, on_hand, committed, reserved, unavailable, safety, incoming)
        available = on_hand - committed - reserved - unavailable - safety  # Position.available
        oversold = max(0, committed + reserved + unavailable - on_hand)  # Position.oversold
        entry = (key, data, content, max(0, available), oversold)
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[slot] = entry
        return entry


# the columns of pg's availability rows, in the order `LevelCache.level` and `_changes` read them by
# position (a name look-up per column per row was a third of the relay's read for a routed order)
_COLUMNS = (
    "sku_id",
    "sku_code",
    "sku_active",
    "sku_version",
    "location_epoch",
    "location_id",
    "on_hand",
    "committed",
    "reserved",
    "unavailable",
    "safety_stock",
    "incoming",
    "version",
    "updated_at",
    "location_code",
    "location_active",
)


async def read_changes(
    conn: AsyncConnection,
    sku_ids: set[int],
    pairs: set[Pair],
    now: datetime,
    tenant_id: int,
    cache: LevelCache,
    audience: Audience = None,
) -> list[Change]:
    """The current state of every availability and stock level the changes touched, in one tenant (the
    transaction's: the messages carry it in their kinds); `cache.contents` then holds their contents.

    Every channel's figure is read for the touched SKUs, not only the channels linked to the touched
    locations: a location just unlinked from a channel (or a ring-fence elsewhere) moves that
    channel's figure too. Unchanged figures cost a read here but are not published.

    `audience` (Hub.audience): messages nobody hears are not built (their keys: `cache.unheard`).
    """
    db = await pg.driver(conn)
    rows = await pg.availability_rows(db, list(sku_ids), []) if sku_ids else []
    return await _changes(conn, rows, await pg.channel_codes(db), pairs, now, tenant_id, cache, audience)


async def claim_and_read(
    conn: AsyncConnection,
    pairs: set[Pair],
    now: datetime,
    tenant_id: int,
    cache: LevelCache,
    audience: Audience = None,
) -> tuple[list[Change], set[Pair]]:
    """`read_changes` of positions a commit named, with their outbox rows claimed in the same
    statement (pg.claim_and_read; a write transaction of the tenant, whose commit deletes the rows:
    the caller commits only after publishing). Returns the changes and the positions claimed."""
    db = await pg.driver(conn)
    rows, claimed, channel_codes = await pg.claim_and_read(db, sorted({s for s, _ in pairs}), sorted(pairs))
    return await _changes(conn, rows, channel_codes, pairs, now, tenant_id, cache, audience), claimed


class ChannelsFound(Exception):
    """`claim_and_read_driver` found channels: their figures are read through SQLAlchemy (the channel
    services), so the caller rolls back (the claim with it) and reads with `claim_and_read` instead."""


async def claim_and_read_driver(
    db: asyncpg.Connection,
    pairs: set[Pair],
    now: datetime,
    tenant_id: int,
    cache: LevelCache,
    audience: Audience = None,
) -> tuple[list[Change], set[Pair]]:
    """`claim_and_read` on the asyncpg connection of a `Database.begin_driver` transaction, for a tenant
    without channels (raises ChannelsFound if it has some). The commit-to-publish path of every change
    runs it: SQLAlchemy's connection, transaction and greenlet hops around the one statement cost that
    path CPU in the event loop, right after the writer's commit."""
    rows, claimed, channel_codes = await pg.claim_and_read(db, sorted({s for s, _ in pairs}), sorted(pairs))
    if channel_codes:
        raise ChannelsFound
    return await _changes(None, rows, [], pairs, now, tenant_id, cache, audience), claimed


async def _changes(
    conn: AsyncConnection | None,
    rows: list[Any],
    channel_codes: list[str],
    pairs: set[Pair],
    now: datetime,
    tenant_id: int,
    cache: LevelCache,
    audience: Audience = None,
) -> list[Change]:
    """The messages of the rows read: each SKU's availability (all channels'), each touched level's.

    With an `audience`, the messages nobody hears are not built: a SKU's rows are only turned into
    levels if its availability (on some channel) or one of its touched levels is heard. An ingested
    batch of 500 positions, with a storefront watching a few SKUs, otherwise built ~1,000 messages
    for nobody (a fifth of the server's samples in bench/ingest.py). Their keys go to
    `cache.unheard`."""
    contents: dict[int, codec.Content] = {}
    unheard: list[tuple[str, str]] = []
    kind = codec.availability_kind(None, tenant_id)
    level_kind = codec.stock_level_kind(tenant_id)
    channel_kinds = [(c, codec.availability_kind(c, tenant_id)) for c in channel_codes]
    # per SKU id: [code, active, sku version + location epoch, sum of level versions, levels shown,
    # whether its availability (no channel) is heard, the channel codes its availability is heard on]
    skus: dict[int, list[Any]] = {}
    touched: list[tuple[str, str, EncodedData, codec.Content]] = []
    if rows and tuple(rows[0].keys())[: len(_COLUMNS)] != _COLUMNS:
        raise RuntimeError("relay_reads: the availability rows' columns are not the expected ones")
    level = cache.level
    for i, r in enumerate(rows):  # in location-code order, as queries.availability_and_levels shows them
        if i % _ROWS_PER_TURN == _ROWS_PER_TURN - 1:
            await asyncio.sleep(0)  # let requests waiting on this loop run (see _ROWS_PER_TURN)
        sku_id, location_id = r[0], r[5]
        sku = skus.get(sku_id)
        if sku is None:
            code = r[1]
            if audience is None:
                sku = skus[sku_id] = [code, r[2], r[3] + r[4], 0, [], True, channel_codes]
            else:
                heard = audience(kind, code)
                if not heard:
                    unheard.append((kind, code))
                on = []
                for channel_code, channel_kind in channel_kinds:
                    if audience(channel_kind, code):
                        on.append(channel_code)
                    else:
                        unheard.append((channel_kind, code))
                sku = skus[sku_id] = [code, r[2], r[3] + r[4], 0, [], heard, on]
        if location_id is None:
            continue  # a SKU without positions
        if audience is not None and not sku[5] and not sku[6]:
            # nobody hears the SKU's availability: only a touched level that somebody hears is built
            if (sku_id, location_id) not in pairs:
                continue
            level_key = codec.stock_level_key(r[1], r[14])
            if not audience(level_kind, level_key):
                unheard.append((level_kind, level_key))
                continue
        entry = level(tenant_id, sku_id, location_id, r)
        version = r[12]
        # every position counts toward the version, active or not (see queries._assemble)
        sku[3] += version
        if r[15] and version > 0:
            sku[4].append(entry)
        if (sku_id, location_id) in pairs:
            touched.append((r[1], r[14], entry[1], entry[2]))
    changes: list[Change] = []
    for code, active, own_version, level_versions, shown, heard, _ in sorted(skus.values(), key=lambda s: s[0]):
        if not heard:
            continue
        available = oversold = 0
        if active:
            for e in shown:
                available += e[3]
                oversold += e[4]
        version = level_versions + own_version
        plain = {
            "sku": code,
            "channel": None,
            "available": available,
            "oversold": oversold,
            "version": version,
            # every shown level, even of a SKU switched off (whose figures are 0), as _assemble does
            "locations": [e[1] for e in shown],
        }
        # the text dumps(plain) makes, from the levels' cached texts (the keys in plain's order)
        text = (
            f'{{"sku":{json_string(code)},"channel":null,"available":{available},"oversold":{oversold},'
            f'"version":{version},"locations":[{",".join([e[1].text for e in shown])}]}}'
        )
        data = EncodedData(plain)
        data.text = text
        contents[id(data)] = (available, oversold, tuple([e[2] for e in shown]), ())
        changes.append(Change(kind, code, version, data))
    for channel_code in channel_codes:
        assert conn is not None  # only claim_and_read_driver passes None, never with channels
        codes = sorted(s[0] for s in skus.values() if channel_code in s[6])
        if not codes:
            continue
        for v in await channel_service.availability_in(conn, channel_code, codes, now):
            changes.append(
                Change(
                    codec.availability_kind(v.channel_code, tenant_id),
                    v.sku_code,
                    v.version,
                    codec.availability_to_data(v),
                )
            )
    touched.sort(key=lambda t: (t[0], t[1]))
    for sku_code, location_code, data, content in touched:
        key = codec.stock_level_key(sku_code, location_code)
        if audience is not None and not audience(level_kind, key):
            unheard.append((level_kind, key))
            continue
        contents[id(data)] = content
        changes.append(Change(level_kind, key, data["version"], data))
    cache.contents = contents
    cache.unheard = unheard
    return changes
