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

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg
from app.db.engine import Pair
from app.realtime import codec
from app.realtime.hub import Change
from app.services import channels as channel_service

# one level as last built: the row's values it was built from, its message dict, its content
# (codec.content of that dict), and its share of the availability (sellable units, oversold units)
_Entry = tuple[tuple[Any, ...], dict[str, Any], codec.Content, int, int]

# positions remembered per relay; past this the cache starts over (a miss only costs a rebuild)
_MAX_ENTRIES = 200_000


class LevelCache:
    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._entries: dict[tuple[int, int, int], _Entry] = {}
        self._max = max_entries
        # content of the messages built last, by id(data): the relay compares it without rebuilding
        self.contents: dict[int, codec.Content] = {}

    def level(self, tenant_id: int, r: Any) -> _Entry:
        slot = (tenant_id, r["sku_id"], r["location_id"])
        # the whole row: any column that moved (figures, version, timestamp, codes, active) rebuilds
        values = tuple(r.values())
        entry = self._entries.get(slot)
        if entry is not None and entry[0] == values:
            return entry
        on_hand, committed, reserved = r["on_hand"], r["committed"], r["reserved"]
        unavailable, safety, incoming = r["unavailable"], r["safety_stock"], r["incoming"]
        data = {
            "sku": r["sku_code"],
            "loc": r["location_code"],
            "on_hand": on_hand,
            "committed": committed,
            "reserved": reserved,
            "unavailable": unavailable,
            "safety_stock": safety,
            "incoming": incoming,
            "version": r["version"],
            "updated_at": pg.aware(r["updated_at"]).isoformat(),
            "active": r["location_active"],
        }
        content = (data["loc"], on_hand, committed, reserved, unavailable, safety, incoming)
        available = on_hand - committed - reserved - unavailable - safety  # Position.available
        oversold = max(0, committed + reserved + unavailable - on_hand)  # Position.oversold
        entry = (values, data, content, max(0, available), oversold)
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[slot] = entry
        return entry


async def read_changes(
    conn: AsyncConnection, sku_ids: set[int], pairs: set[Pair], now: datetime, tenant_id: int, cache: LevelCache
) -> list[Change]:
    """The current state of every availability and stock level the changes touched, in one tenant (the
    transaction's: the messages carry it in their kinds); `cache.contents` then holds their contents.

    Every channel's figure is read for the touched SKUs, not only the channels linked to the touched
    locations: a location just unlinked from a channel (or a ring-fence elsewhere) moves that
    channel's figure too. Unchanged figures cost a read here but are not published.
    """
    db = await pg.driver(conn)
    rows = await pg.availability_rows(db, list(sku_ids), []) if sku_ids else []
    contents: dict[int, codec.Content] = {}
    kind = codec.availability_kind(None, tenant_id)
    level_kind = codec.stock_level_kind(tenant_id)
    # per SKU id: [code, active, sku version + location epoch, sum of level versions, levels shown]
    skus: dict[int, list[Any]] = {}
    touched: list[tuple[str, str, dict[str, Any], codec.Content]] = []
    for r in rows:  # in location-code order, as queries.availability_and_levels shows them
        sku_id = r["sku_id"]
        sku = skus.get(sku_id)
        if sku is None:
            sku = skus[sku_id] = [r["sku_code"], r["sku_active"], r["sku_version"] + r["location_epoch"], 0, []]
        location_id = r["location_id"]
        if location_id is None:
            continue  # a SKU without positions
        entry = cache.level(tenant_id, r)
        version = r["version"]
        # every position counts toward the version, active or not (see queries._assemble)
        sku[3] += version
        if r["location_active"] and version > 0:
            sku[4].append(entry)
        if (sku_id, location_id) in pairs:
            touched.append((r["sku_code"], r["location_code"], entry[1], entry[2]))
    changes: list[Change] = []
    for code, active, own_version, level_versions, shown in sorted(skus.values(), key=lambda s: s[0]):
        here = shown if active else []
        data = {
            "sku": code,
            "channel": None,
            "available": sum(e[3] for e in here),
            "oversold": sum(e[4] for e in here),
            "version": level_versions + own_version,
            # every shown level, even of a SKU switched off (whose figures are 0), as _assemble does
            "locations": [e[1] for e in shown],
        }
        contents[id(data)] = (data["available"], data["oversold"], tuple(e[2] for e in shown), ())
        changes.append(Change(kind, code, data["version"], data))
    codes = [c.key for c in changes]
    for channel_code in await pg.channel_codes(db):
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
        contents[id(data)] = content
        changes.append(Change(level_kind, codec.stock_level_key(sku_code, location_code), data["version"], data))
    cache.contents = contents
    return changes
