"""The relay's cached read (app/realtime/relay_reads.py) builds exactly the messages the plain read
builds (`queries.availability_and_levels` + codec), cold and after changes with a warm cache, and the
contents it hands the relay are `codec.content` of those messages."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, tenancy
from app.db.engine import Pair
from app.db.tenancy import DEFAULT_TENANT
from app.realtime import codec, relay_reads
from app.realtime.changes import EncodedData, decode_message, encode_changes
from app.realtime.hub import Change
from app.realtime.relay import OutboxRelay
from app.services import channels as channel_service
from app.services import queries
from app.services.context import utc_now
from tests.conftest import Api
from tests.helpers import UPSERT_LOCATIONS, UPSERT_SKUS, catalogue, event, record, reserve

_SPLICED = (codec.availability_kind(None, DEFAULT_TENANT), codec.stock_level_kind(DEFAULT_TENANT))


async def _reference(conn: AsyncConnection, sku_ids: set[int], pairs: set[Pair], now: datetime) -> list[Change]:
    """The relay's read before the cache, verbatim."""
    views, levels = await queries.availability_and_levels(conn, sku_ids=sku_ids)
    codes = [v.sku_code for v in views]
    for channel_code in await pg.channel_codes(await pg.driver(conn)):
        views += await channel_service.availability_in(conn, channel_code, codes, now)
    changes = [
        Change(
            codec.availability_kind(v.channel_code, DEFAULT_TENANT),
            v.sku_code,
            v.version,
            codec.availability_to_data(v),
        )
        for v in views
    ]
    touched = sorted((levels[p] for p in pairs if p in levels), key=lambda lv: (lv.sku_code, lv.location_code))
    for level in touched:
        key = codec.stock_level_key(level.sku_code, level.location_code)
        changes.append(Change(codec.stock_level_kind(DEFAULT_TENANT), key, level.version, codec.level_to_data(level)))
    return changes


async def _compare(api: Api, cache: relay_reads.LevelCache) -> list[Change]:
    ids = {code: i for i, code in await api.sql("SELECT id, code FROM skus")}
    pairs = {(s, loc) for s, loc in await api.sql("SELECT sku_id, location_id FROM stock_levels")}
    touched = {p for p in pairs if p[1] % 2 == 1}  # some positions, not all
    now = utc_now()
    with tenancy.acting_for(DEFAULT_TENANT):
        async with api.ctx.db.read() as conn:
            expected = await _reference(conn, set(ids.values()), touched, now)
            got = await relay_reads.read_changes(conn, set(ids.values()), touched, now, DEFAULT_TENANT, cache)
    assert got == expected
    # the text each message goes out as is what encoding its dict makes (the relay splices the levels'
    # cached texts in: changes.EncodedData), one by one and as a batch
    plain = [{"kind": c.kind, "key": c.key, "version": c.version, "data": dict(c.data)} for c in got]
    assert all(isinstance(c.data, EncodedData) for c in got if c.kind in _SPLICED)
    for change, body in zip(got, plain, strict=True):
        assert encode_changes([change]) == json.dumps(body, separators=(",", ":"))
    batch = encode_changes(got)
    assert batch == json.dumps({"changes": plain}, separators=(",", ":"))
    assert decode_message(batch) == expected  # this process's own text: the changes it was made from
    assert decode_message(batch) == expected  # heard twice (a second hub): parsed
    # this process's own text decodes to the very changes it was made from, not to equal new ones
    own = decode_message(encode_changes(got))
    assert own == expected and all(a is b for a, b in zip(own, got, strict=True))
    assert decode_message(encode_changes(got)) == expected
    for change in got:
        assert cache.contents.get(id(change.data), codec.content(change.kind, change.data)) == codec.content(
            change.kind, change.data
        )
    # the hint path's read of the touched positions' SKUs, claiming their outbox rows in the same
    # statement, builds the same messages (rows of this transaction only, rolled back with it: the
    # running relay cannot take them first)
    some = sorted(touched)[: max(1, len(touched) // 2)]
    with tenancy.acting_for(DEFAULT_TENANT):
        async with api.ctx.db.read() as conn:
            await pg.enqueue_changes(await pg.driver(conn), some, now)
            hinted = await _reference(conn, {s for s, _ in touched}, touched, now)
            read, claimed = await relay_reads.claim_and_read(conn, touched, now, DEFAULT_TENANT, cache)
            left = await (await pg.driver(conn)).fetch("SELECT sku_id, location_id FROM outbox")
            # the same on the asyncpg connection alone (the relay's hint path for a tenant without
            # channels), claiming rows queued again
            await pg.enqueue_changes(await pg.driver(conn), some, now)
            on_driver, claimed_on_driver = await relay_reads.claim_and_read_driver(
                await pg.driver(conn), touched, now, DEFAULT_TENANT, cache
            )
    assert read == hinted
    assert set(some) <= claimed <= touched  # and committed rows of these positions not yet relayed
    assert not {(r[0], r[1]) for r in left} & touched  # deleted in the claim's transaction
    assert on_driver == hinted
    assert set(some) <= claimed_on_driver <= touched
    return got


async def test_cached_read_builds_the_same_messages(api: Api) -> None:
    await catalogue(api, ["A", "B", "C", "EMPTY"], [("WH-1", 10), ("WH-2", 20), ("WH-3", 30)])
    await record(
        api,
        event("RECEIVED", "A", "WH-1", 10),
        event("RECEIVED", "A", "WH-2", 5),
        event("RECEIVED", "B", "WH-2", 7),
        event("RECEIVED", "B", "WH-3", 1),
        event("RECEIVED", "C", "WH-3", 4),
    )
    cache = relay_reads.LevelCache()
    first = await _compare(api, cache)
    assert {c.key for c in first if codec.is_availability(c.kind)} == {"A", "B", "C", "EMPTY"}

    # changes after the cache is warm: a hold, an oversold position, a location off, a SKU off
    held = await reserve(api, [{"skuCode": "A", "quantity": 3, "locationCode": "WH-1"}])
    assert held["userErrors"] == []
    await record(api, event("SOLD", "B", "WH-3", 3))
    await _compare(api, cache)
    await api.ok(UPSERT_LOCATIONS, input=[{"code": "WH-2", "name": "WH-2", "kind": "WAREHOUSE", "active": False}])
    await _compare(api, cache)
    await api.ok(UPSERT_SKUS, input=[{"code": "C", "name": "C", "active": False}])
    last = await _compare(api, cache)
    by_key = {c.key: c.data for c in last if codec.is_availability(c.kind)}
    assert by_key["A"]["available"] == 7  # WH-1's 10 less 3 held; WH-2 is off
    assert by_key["B"]["oversold"] == 2 and by_key["B"]["available"] == 0
    assert by_key["C"]["available"] == 0  # switched off


async def test_the_hint_path_and_the_drain_rebuild_only_levels_that_moved(api: Api) -> None:
    # the hint path's rows (pg.claim_and_read) carry more columns than the drain's (pg.availability_rows):
    # a cache keyed on the whole row never matched between them, so a drain after a hinted publication
    # rebuilt every level of the SKUs (a routed order: ~2,400) to publish nothing new
    await catalogue(api, ["A", "B"], [("WH-1", 10), ("WH-2", 20), ("WH-3", 30)])
    await record(
        api,
        event("RECEIVED", "A", "WH-1", 10),
        event("RECEIVED", "A", "WH-2", 5),
        event("RECEIVED", "B", "WH-3", 1),
    )
    ids = {code: i for i, code in await api.sql("SELECT id, code FROM skus")}
    pairs = {(s, loc) for s, loc in await api.sql("SELECT sku_id, location_id FROM stock_levels")}
    assert len(pairs) == 3
    cache = relay_reads.LevelCache()

    async def drain() -> list[Change]:
        with tenancy.acting_for(DEFAULT_TENANT):
            async with api.ctx.db.read() as conn:
                return await relay_reads.read_changes(conn, set(ids.values()), pairs, utc_now(), DEFAULT_TENANT, cache)

    async def hinted() -> list[Change]:
        with tenancy.acting_for(DEFAULT_TENANT):
            async with api.ctx.db.read() as conn:  # rolled back: claims nothing for good
                return (await relay_reads.claim_and_read(conn, pairs, utc_now(), DEFAULT_TENANT, cache))[0]

    first = await drain()
    assert cache.rebuilt == 3
    assert await hinted() == first  # the same messages, from the levels the drain built
    assert cache.rebuilt == 3
    assert await drain() == first
    assert cache.rebuilt == 3

    await record(api, event("SOLD", "A", "WH-2", 2))
    after = await hinted()
    assert cache.rebuilt == 4  # A at WH-2 only
    a = next(c for c in after if c.kind == _SPLICED[0] and c.key == "A")
    assert a.data["available"] == 13 and [lv["on_hand"] for lv in a.data["locations"]] == [10, 3]
    assert await drain() == after
    assert cache.rebuilt == 4


UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) { userErrors { message } } }"""


async def test_the_driver_read_leaves_a_tenant_with_channels_to_the_full_read(api: Api) -> None:
    """A channel's figure is read through the channel services (SQLAlchemy): the asyncpg-only read
    refuses before building anything, and the relay's hint path still publishes it, through the full read."""
    await catalogue(api, ["A"], [("WH-1", 10)])
    await record(api, event("RECEIVED", "A", "WH-1", 10))
    data = await api.ok(UPSERT_CHANNELS, input=[{"code": "WEB", "name": "Web", "locationCodes": ["WH-1"]}])
    assert data["upsertChannels"]["userErrors"] == []
    ((sku_id, location_id),) = await api.sql("SELECT sku_id, location_id FROM stock_levels")
    with tenancy.acting_for(DEFAULT_TENANT):
        async with api.ctx.db.read() as conn:
            await pg.enqueue_changes(await pg.driver(conn), [(sku_id, location_id)], utc_now())
            with pytest.raises(relay_reads.ChannelsFound):
                await relay_reads.claim_and_read_driver(
                    await pg.driver(conn), {(sku_id, location_id)}, utc_now(), DEFAULT_TENANT, relay_reads.LevelCache()
                )

    class Capture:
        unheard = False  # a listener is assumed: this relay publishes

        def audience(self) -> None:
            return None  # anyone may hear: every message is built

        def __init__(self) -> None:
            self.changes: list[Change] = []

        def observe(self, observer: Any) -> None:
            """Nothing comes back: this relay only publishes."""

        async def publish_many(self, changes: list[Change]) -> None:
            self.changes += changes

    hub = Capture()
    relay = OutboxRelay(api.ctx, hub)  # type: ignore[arg-type]
    for _ in range(2):  # the second time straight through the full read
        await relay.publish_hinted({(sku_id, location_id)}, DEFAULT_TENANT)
    assert relay._channel_tenants == {DEFAULT_TENANT}
    web = codec.availability_kind("WEB", DEFAULT_TENANT)
    assert [(c.kind, c.key, c.data["available"]) for c in hub.changes if codec.is_availability(c.kind)] == [
        (codec.availability_kind(None, DEFAULT_TENANT), "A", 10),
        (web, "A", 10),
    ]  # once: the second read had no news


def test_a_levels_updated_at_text_is_its_own_when_many_share_or_overflow_the_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LevelCache converts each distinct updated_at once: levels sharing one get its text, others
    theirs, also after the memo of texts started over."""
    monkeypatch.setattr(relay_reads, "_MAX_STAMPS", 2)
    cache = relay_reads.LevelCache()

    def row(sku_id: int, at: datetime) -> tuple[Any, ...]:
        # the availability columns (relay_reads._COLUMNS), in their order
        return (sku_id, f"S{sku_id}", True, 1, 0, 1, 5, 0, 0, 0, 0, 0, 1, at, "L", True)

    times = [datetime(2026, 12, 6, 2, 0, s, 1000 * s) for s in range(5)]
    for i, at in enumerate([times[0], times[0], times[1], times[2], times[3], times[0], times[4]]):
        data = cache.level(1, i, 1, row(i, at))[1]
        assert data["updated_at"] == pg.aware(at).isoformat()
        assert json.loads(data.text)["updated_at"] == pg.aware(at).isoformat()
