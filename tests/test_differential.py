"""Differential test: the real service (over HTTP, on PostgreSQL) against the reference model of the contract.

A seeded random driver plays the same steps on both (event batches in and out of order, late counts,
duplicates and conflicting duplicates, invalid batches, reserves with and without location or channel,
idempotent repeats, commits, releases, extends, holds that expire on a clock the test moves, channel rule
changes) and after every step compares the acknowledgement (event statuses, versions and drift,
userError codes, reservation states, lines and expiry), every position (all StockLevel fields including
version), availability with and without a channel, every reservation of every cart, and that each
Availability.version only goes up and moves whenever its figure does.

`STOCKWIRE_DIFF_SEEDS` (default 12) and `STOCKWIRE_DIFF_STEPS` (default 150) scale it; a failure names
its seed and prints the steps that led to it, so `STOCKWIRE_DIFF_ONLY_SEED=<seed>` replays it alone.

Every item of issue 11 is generated: backorders committed, released, expired and covered by arrivals
(item 1), reserves right after holds expired and before any sweep (3), late counts after later events of
their batch (4), commits again with another orderRef (6), quantities past 32 bits (7), settings cleared
with an explicit null and repeats inside one batch (9).
"""

from __future__ import annotations

import copy
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.services import reservations as reservation_service
from app.settings import Settings
from tests.conftest import Api, _truncate, create_test_key
from tests.helpers import RECORD, UPSERT_LOCATIONS, UPSERT_SKUS
from tests.reference_model import Channel, Location, Model, Outcome

SEEDS = int(os.environ.get("STOCKWIRE_DIFF_SEEDS", "12"))
STEPS = int(os.environ.get("STOCKWIRE_DIFF_STEPS", "150"))
ONLY_SEED = os.environ.get("STOCKWIRE_DIFF_ONLY_SEED")


T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
NOW0 = T0 + timedelta(days=1)
SKUS = ["SKU-A", "SKU-B", "SKU-C"]
LOCATIONS = [Location("L1", 10), Location("L2", 20), Location("L3", 20, count_authority="wms")]
CARTS = ["c0", "c1", "c2", "c3"]
CHANNELS = ["WEB", "POS"]
LEVEL_FIELDS = (
    "skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version"
)
LINE_FIELDS = "skuCode locationCode quantity backordered expectedAt"
STATE = f"""query($skus: [String!]!) {{
  levels: stockLevels(skuCodes: $skus, first: 100) {{ {LEVEL_FIELDS} }}
  all: availability(skuCodes: $skus) {{ skuCode available oversold version locations {{ {LEVEL_FIELDS} }} }}
  web: availability(skuCodes: $skus, channelCode: "WEB") {{ skuCode available version }}
  pos: availability(skuCodes: $skus, channelCode: "POS") {{ skuCode available version }}
  c0: reservations(cartRef: "c0") {{ id status expiresAt cartRef orderRef lines {{ {LINE_FIELDS} }} }}
  c1: reservations(cartRef: "c1") {{ id status expiresAt cartRef orderRef lines {{ {LINE_FIELDS} }} }}
  c2: reservations(cartRef: "c2") {{ id status expiresAt cartRef orderRef lines {{ {LINE_FIELDS} }} }}
  c3: reservations(cartRef: "c3") {{ id status expiresAt cartRef orderRef lines {{ {LINE_FIELDS} }} }}
}}"""
_RESERVATION = f"id status expiresAt cartRef orderRef lines {{ {LINE_FIELDS} }}"
RESERVE = f"""mutation($input: ReserveInput!) {{ reserve(input: $input) {{
  reservation {{ {_RESERVATION} }} userErrors {{ code message field }} }} }}"""
COMMIT = f"""mutation($id: ID!, $orderRef: String!) {{ commitReservation(id: $id, orderRef: $orderRef) {{
  reservation {{ {_RESERVATION} }} userErrors {{ code message field }} }} }}"""
RELEASE = f"""mutation($id: ID!) {{ releaseReservation(id: $id) {{
  reservation {{ {_RESERVATION} }} userErrors {{ code message field }} }} }}"""
EXTEND = f"""mutation($id: ID!, $ttl: Int!) {{ extendReservation(id: $id, ttlSeconds: $ttl) {{
  reservation {{ {_RESERVATION} }} userErrors {{ code message field }} }} }}"""
UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  channels { code } userErrors { code message field } } }"""

EVENT_TYPES = {
    "RECEIVED": 4,
    "INCOMING": 4,
    "ADJUSTED": 1,
    "COUNTED": 4,
    "SOLD": 2,
    "ORDER_PLACED": 2,
    "ORDER_CANCELLED": 1,
    "SHIPPED": 2,
    "RETURNED": 1,
    "DAMAGED": 1,
    "REPAIRED": 1,
    "WRITTEN_OFF": 1,
    "TRANSFER_OUT": 1,
    "TRANSFER_IN": 1,
    "SAFETY_STOCK_SET": 1,
}


class Mismatch(AssertionError):
    pass


@pytest.fixture
async def pg_api(postgres_url: str) -> AsyncIterator[Api]:
    """The app on PostgreSQL with a clock the test moves, the background sweeper idle (the driver sweeps
    when the model says holds expired) and no hold rate limit (thousands of reserves from one key)."""
    await _truncate(postgres_url)
    settings = Settings(
        database_url=postgres_url, broadcast_url="memory://", expiry_sweep_seconds=3600, hold_rate_limit=0
    )
    key = await create_test_key(postgres_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, app.state.runtime.ctx, key)


def _time(s: str) -> datetime:
    return datetime.fromisoformat(s)


@dataclass
class Driver:
    api: Api
    rng: random.Random
    model: Model
    log: list[str]
    clock_now: list[datetime]
    counter: int = 0
    source_time: float = 60.0  # minutes after T0: where the sources' clocks are
    availability_seen: dict[tuple[str, str | None], tuple[int, Any]] = field(default_factory=dict)
    _sent: list[tuple[dict[str, Any], None]] = field(default_factory=list)
    _reserves: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)  # what the run exercised, asserted at its end

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def fail(self, what: str) -> None:
        history = "\n".join(self.log[-25:])
        model = "\n".join(
            f"{p}: {pos.figures()} counted_at={pos.counted_at}" for p, pos in sorted(self.model.positions.items())
        )
        raise Mismatch(f"{what}\n--- last steps (newest last) ---\n{history}\n--- model positions ---\n{model}")

    def check(self, label: str, service: Any, model: Any) -> None:
        if service != model:
            self.fail(f"{label}: service {service!r} != model {model!r}")

    # --- set-up --------------------------------------------------------------------------------------

    async def setup(self) -> None:
        data = await self.api.ok(UPSERT_SKUS, input=[{"code": c, "name": c} for c in SKUS])
        assert data["upsertSkus"]["userErrors"] == []
        locs = [
            {"code": x.code, "name": x.code, "kind": "WAREHOUSE", "priority": x.priority}
            | ({"countAuthority": x.count_authority} if x.count_authority else {})
            for x in LOCATIONS
        ]
        data = await self.api.ok(UPSERT_LOCATIONS, input=locs)
        assert data["upsertLocations"]["userErrors"] == [], data
        for s in SKUS:
            self.model.add_sku(s)
        for x in LOCATIONS:
            self.model.add_location(Location(x.code, x.priority, x.active, x.count_authority))
        await self.upsert_channel("WEB", ["L1", "L2"])
        await self.upsert_channel("POS", ["L2", "L3"])

    async def upsert_channel(self, code: str, locations: list[str]) -> None:
        r = self.rng
        old = self.model.channels.get(code)
        ch = Channel(
            code,
            locations,
            safety_buffer_units=r.choice([0, 0, 1, 2]),
            safety_buffer_percent=r.choice([None, 10.0, 33.3, 12.5]),
            allocation_percent=r.choice([None, 60.0, 50.0, 33.3, 90.0]),
            allocation_cap=r.choice([None, 4, 8, 15]),
            out_of_stock_threshold=r.choice([0, 0, 2, 3]),
            # backorders are common: most channels take them, with limits small enough to be reached
            backorder_limit=r.choice([None, 3, 5, 8, 8]) if code == "WEB" else r.choice([None, 2, 4, 6]),
        )
        cleared: list[str] = []
        if old is not None:
            for name in ("safety_buffer_percent", "allocation_percent", "allocation_cap", "backorder_limit"):
                if getattr(ch, name) is None and getattr(old, name) is not None:
                    if r.random() < 0.4:
                        cleared.append(name)  # an explicit null clears the stored setting (item 9)
                    else:
                        setattr(ch, name, getattr(old, name))  # an omitted field keeps it
            if old.backorder_limit is not None and ch.backorder_limit is not None:
                # never below what is already backordered: the contract says nothing of a limit lowered
                # under outstanding backorders
                held = max((v for (c, _), v in self.model.backordered.items() if c == code), default=0)
                ch.backorder_limit = max(ch.backorder_limit, held)
        body = {
            "code": code,
            "name": code,
            "locationCodes": locations,
            "safetyBufferUnits": ch.safety_buffer_units,
            "outOfStockThreshold": ch.out_of_stock_threshold,
        }
        for name, value in (
            ("safetyBufferPercent", ch.safety_buffer_percent),
            ("allocationPercent", ch.allocation_percent),
            ("allocationCap", ch.allocation_cap),
            ("backorderLimit", ch.backorder_limit),
        ):
            if value is not None:
                body[name] = value
            elif "".join(f"_{c.lower()}" if c.isupper() else c for c in name) in cleared:
                body[name] = None
                self.seen["channel setting cleared"] += 1
        data = await self.api.ok(UPSERT_CHANNELS, input=[body])
        self.log.append(f"upsertChannels {body}")
        self.check("upsertChannels userErrors", data["upsertChannels"]["userErrors"], [])
        self.model.upsert_channel(ch)

    # --- steps ---------------------------------------------------------------------------------------

    async def step(self) -> None:
        r = self.rng.random()
        if r < 0.40:
            await self.events()
        elif r < 0.62:
            await self.reserve()
        elif r < 0.67:
            await self.reserve_again()
        elif r < 0.75:
            await self.commit()
        elif r < 0.82:
            await self.release()
        elif r < 0.87:
            await self.extend()
        elif r < 0.95:
            await self.advance()
        elif r < 0.97:
            await self.toggle_location()
        else:
            await self.upsert_channel(
                self.rng.choice(CHANNELS), ["L1", "L2"] if self.rng.random() < 0.5 else ["L2", "L3"]
            )
            # a channel's locations may change too; the model follows
        await self.compare_state()

    def _event(self) -> dict[str, Any]:
        r = self.rng
        t = r.choices(list(EVENT_TYPES), weights=list(EVENT_TYPES.values()))[0]
        if t == "COUNTED":
            q = r.randint(0, 25)
        elif t == "SAFETY_STOCK_SET":
            q = r.randint(0, 3)
        elif t == "ADJUSTED":
            q = r.choice([-1, 1]) * r.randint(1, 6)
        else:
            q = r.randint(1, 10)
        big = t in ("RECEIVED", "ADJUSTED", "INCOMING", "ORDER_PLACED", "DAMAGED") and r.random() < 0.05
        if big:  # item 7: three of these on one SKU pass 32 bits (QUANTITY_OUT_OF_RANGE); one past the bound
            q = r.choice([1, -1] if t == "ADJUSTED" else [1]) * r.choice([1_000_000_000] * 5 + [1_000_000_001])
        roll = r.random()
        if roll < 0.6:
            self.source_time += r.choice([0, 0.5, 1, 2])
            minutes = self.source_time
        elif roll < 0.9:
            minutes = self.source_time - r.randint(1, 40)  # late
        else:
            minutes = self.source_time  # exactly at the same time as the latest
        loc = r.choice(LOCATIONS).code
        e: dict[str, Any] = {
            "source": r.choice(["erp", "wms", "wms"]) if t == "COUNTED" else r.choice(["erp", "wms"]),
            "externalId": self.fresh("x"),
            "type": t,
            "skuCode": "SKU-C" if big else r.choice(SKUS),
            "locationCode": loc,
            "quantity": q,
            "occurredAt": (T0 + timedelta(minutes=minutes)).isoformat(),
        }
        if t == "TRANSFER_OUT" and r.random() < 0.6:
            e["toLocationCode"] = r.choice([x.code for x in LOCATIONS if x.code != loc])
        if t == "INCOMING" and r.random() < 0.5:
            e["expectedAt"] = (NOW0 + timedelta(days=r.randint(1, 9))).isoformat()
        if r.random() < 0.2:
            e["reference"] = f"doc-{r.randint(1, 3)}"
        return e

    async def events(self) -> None:
        r = self.rng
        batch: list[dict[str, Any]] = []
        for _ in range(r.choice([1, 1, 2, 3, 5])):
            roll = r.random()
            previous = [e for (e, _) in self._sent]
            if roll < 0.08 and previous:
                batch.append(dict(r.choice(previous)))  # an exact repeat: DUPLICATE
            elif roll < 0.10 and previous:
                e = dict(r.choice(previous))
                e["quantity"] = e["quantity"] + 1  # same pair, other content: EVENT_CONFLICT
                batch.append(e)
            elif roll < 0.115:
                e = self._event() | {"type": "SOLD", "quantity": 0}  # INVALID_QUANTITY
                e.pop("expectedAt", None)
                e.pop("toLocationCode", None)
                batch.append(e)
            elif roll < 0.12:
                batch.append(self._event() | {"skuCode": "NO-SUCH-SKU"})
            else:
                batch.append(self._event())
        if r.random() < 0.05 and batch:
            batch.append(dict(batch[0]))  # the same event twice in one batch
        occurred = [_time(e["occurredAt"]) for e in batch]
        self.log.append(f"recordInventoryEvents {batch}")
        data = await self.api.ok(RECORD, input=batch)
        got = data["recordInventoryEvents"]
        want = self.model.record(batch, occurred)
        self._compare_events(got, want, batch)
        if not want.errors:
            self._sent += [(e, None) for e in batch]

    def _compare_events(self, got: dict[str, Any], want: Outcome, batch: list[dict[str, Any]]) -> None:
        codes = tuple(sorted({u["code"] for u in got["userErrors"]}))
        self.check("recordInventoryEvents userErrors", codes, want.errors)
        self.seen.update(f"event {c}" for c in codes)
        self.seen.update(f"event {r['status']}" for r in got["results"])
        self.seen.update("drift" for r in got["results"] if r["drift"])
        if want.errors:
            self.check("results of a refused batch", got["results"], [])
            return
        first_of: dict[tuple[str, str], int] = {}
        for i, e in enumerate(batch):
            first_of.setdefault((e["source"], e["externalId"]), i)
        results = []
        for res, (i, status, version, drift), e in zip(got["results"], want.value, batch, strict=True):
            if status == "DUPLICATE" and first_of[(e["source"], e["externalId"])] != i:
                self.seen["event DUPLICATE in its batch"] += 1
            results.append((res["index"], res["status"], res["version"], res["drift"]))
            want_row = (i, status, version, drift)
            if results[-1] != want_row:
                self.fail(
                    f"event {i} ({e['type']} {e['quantity']} at {e['occurredAt']}): service "
                    f"{results[-1]} != model {want_row}"
                )
        self.check("number of results", len(got["results"]), len(batch))

    def _lines(self) -> list[dict[str, Any]]:
        r = self.rng
        skus = r.sample(SKUS, r.choice([1, 1, 2]))
        return [
            {"skuCode": s, "quantity": r.randint(1, 7)}
            | ({"locationCode": r.choice(LOCATIONS).code} if r.random() < 0.35 else {})
            for s in skus
        ]

    async def reserve(
        self, lines: list[dict[str, Any]] | None = None, key: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        r = self.rng
        if extra is None:
            extra = {"ttlSeconds": r.randint(1, 40), "cartRef": r.choice(CARTS)}
            if r.random() < 0.5:
                extra["channelCode"] = r.choice(CHANNELS)
        if lines is None:
            lines = self._lines()
            if "channelCode" in extra:
                lines = [{k: v for k, v in ln.items() if k != "locationCode"} for ln in lines]
                if extra["channelCode"] in self.model.channels and r.random() < 0.6:
                    # into the channel's backorder allowance: past its stock part, within its figure
                    for ln in lines:
                        figure, allowed = self.model.channel_figure(extra["channelCode"], ln["skuCode"])
                        if allowed > 0:
                            ln["quantity"] = figure + r.randint(1, allowed)
        if key is None and r.random() < 0.06:
            bad = r.choice(["ttl", "duplicate", "channel", "quantity"])
            if bad == "ttl":
                extra = extra | {"ttlSeconds": r.choice([0, 3601])}
            elif bad == "duplicate":
                lines = [lines[0], dict(lines[0])]
            elif bad == "channel":
                extra = extra | {"channelCode": "NO-SUCH-CHANNEL"}
                lines = [{k: v for k, v in ln.items() if k != "locationCode"} for ln in lines]
            else:
                lines = [lines[0] | {"quantity": 0}]
        key = key or self.fresh("k")
        self._reserves.append((key, lines, extra))
        payload = {"lines": lines, "idempotencyKey": key, **extra}
        self.log.append(f"reserve {payload}")
        data = await self.api.ok(RESERVE, input=payload)
        got = data["reserve"]
        rid = got["reservation"]["id"] if got["reservation"] else None
        args = (lines, key, extra["ttlSeconds"], extra.get("channelCode"), extra.get("cartRef"))
        if rid is None and self._model_would_hold(*args):
            codes = [u["code"] for u in got["userErrors"]]
            self.fail(f"reserve: the service refused what the model holds: {codes} {got['userErrors']}")
        want = self.model.reserve(rid or "refused", *args)
        held = self.model.reservations.get(rid or "")
        if held is not None and not want.errors:
            lines_held = held.lines
            self.seen["reserve under a channel"] += held.channel is not None
            self.seen["reserve with backorders"] += any(ln.backordered for ln in lines_held)
            self.seen["reserve split across locations"] += len({ln.location for ln in lines_held}) < len(lines_held)
        self._compare_reservation("reserve", got, want)

    def _model_would_hold(self, *args: Any) -> bool:
        """Whether the model holds this reserve (asked on a copy, so the model changes only once)."""
        return not copy.deepcopy(self.model).reserve("probe", *args).errors

    async def reserve_again(self) -> None:
        if not self._reserves:
            return await self.reserve()
        key, lines, extra = self.rng.choice(self._reserves)
        if self.rng.random() < 0.3:
            lines = [dict(ln) for ln in lines]
            lines[0]["quantity"] += 1  # other lines under the same key: IDEMPOTENCY_CONFLICT if it held
        await self.reserve(lines, key, extra)

    def _compare_reservation(self, label: str, got: dict[str, Any], want: Outcome) -> None:
        codes = tuple(sorted({u["code"] for u in got["userErrors"]}))
        self.check(f"{label} userErrors", codes, want.errors)
        self.seen.update(f"{label} {c}" for c in codes or ("ok",))
        if want.errors:
            return
        res = got["reservation"]
        self.check(f"{label} reservation id", res["id"], want.value)
        self._compare_view(label, res)

    def _compare_view(self, label: str, res: dict[str, Any]) -> None:
        view = self.model.view(res["id"])
        self.check(f"{label} status of {res['id']}", res["status"], view["status"])
        self.check(f"{label} expiresAt of {res['id']}", _time(res["expiresAt"]), view["expiresAt"])
        self.check(f"{label} cartRef of {res['id']}", res["cartRef"], view["cartRef"])
        self.check(f"{label} orderRef of {res['id']}", res["orderRef"], view["orderRef"])
        service_lines = sorted(
            (
                ln["skuCode"],
                ln["locationCode"],
                ln["quantity"],
                ln["backordered"],
                _time(ln["expectedAt"]) if ln["expectedAt"] else None,
            )
            for ln in res["lines"]
        )
        self.check(f"{label} lines of {res['id']}", service_lines, view["lines"])

    def _pick(self) -> str:
        ids = list(self.model.reservations)  # in creation order: the service's ids are random
        if not ids or self.rng.random() < 0.04:
            return str(uuid.UUID(int=self.rng.getrandbits(128)))
        return self.rng.choice(ids)

    async def commit(self) -> None:
        rid = self._pick()
        promised = [
            x.id for x in self.model.reservations.values() if x.status == "ACTIVE" and any(ln.open for ln in x.lines)
        ]
        if promised and self.rng.random() < 0.5:
            rid = self.rng.choice(promised)  # an order for backordered units: they stay promised (item 1)
        res = self.model.reservations.get(rid)
        order_ref = self.fresh("ORD-")
        if res is not None and res.status == "COMMITTED" and res.order_ref and self.rng.random() < 0.5:
            order_ref = res.order_ref  # the same order again: the same result (another: refused)
        if res is not None and res.status == "ACTIVE":
            self.seen["commit with backorders"] += any(ln.backordered for ln in res.lines)
        self.log.append(f"commitReservation {rid} {order_ref}")
        data = await self.api.ok(COMMIT, id=rid, orderRef=order_ref)
        self._compare_reservation("commit", data["commitReservation"], self.model.commit(rid, order_ref))

    async def release(self) -> None:
        rid = self._pick()
        self.log.append(f"releaseReservation {rid}")
        data = await self.api.ok(RELEASE, id=rid)
        self._compare_reservation("release", data["releaseReservation"], self.model.release(rid))

    async def extend(self) -> None:
        rid = self._pick()
        ttl = self.rng.choice([0, 3601]) if self.rng.random() < 0.05 else self.rng.randint(1, 40)
        self.log.append(f"extendReservation {rid} {ttl}")
        data = await self.api.ok(EXTEND, id=rid, ttl=ttl)
        self._compare_reservation("extend", data["extendReservation"], self.model.extend(rid, ttl))

    async def advance(self) -> None:
        seconds = self.rng.choice([0.4, 1.3, 3.7, 7.1, 15.9, 31.3]) + self.rng.random()
        target = self.model.now + timedelta(seconds=seconds)
        # never land within a few ms of an expiry: "past expiresAt" at the exact instant is not the point here
        while any(abs((target - b).total_seconds()) < 0.005 for b in self.model.expiry_boundaries()):
            target += timedelta(milliseconds=7)
        seconds = (target - self.model.now).total_seconds()
        active = sum(r.status == "ACTIVE" for r in self.model.reservations.values())
        self.model.advance(seconds)
        self.seen["expired"] += active - sum(r.status == "ACTIVE" for r in self.model.reservations.values())
        self.clock_now[0] = self.model.now
        self.log.append(f"clock += {seconds:.6f}s -> {self.model.now.isoformat()}")
        if self.rng.random() < 0.5:
            await self.reserve()  # before any sweep: an expired hold must not block it
        while await reservation_service.sweep_expired(self.api.ctx):
            pass

    async def toggle_location(self) -> None:
        loc = self.model.locations[self.rng.choice(["L2", "L3"])]
        body = {"code": loc.code, "name": loc.code, "kind": "WAREHOUSE", "active": not loc.active}
        self.log.append(f"upsertLocations {body}")
        data = await self.api.ok(UPSERT_LOCATIONS, input=[body])
        self.check("upsertLocations userErrors", data["upsertLocations"]["userErrors"], [])
        self.model.set_active(loc.code, not loc.active)

    # --- the whole state -----------------------------------------------------------------------------

    async def compare_state(self) -> None:
        data = await self.api.ok(STATE, skus=SKUS)
        m = self.model
        service_levels = {(x["skuCode"], x["locationCode"]): x for x in data["levels"]}
        model_levels = {p: pos for p, pos in m.positions.items() if pos.version > 0}
        self.check("positions that exist", sorted(service_levels), sorted(model_levels))
        for pair, pos in model_levels.items():
            row = {k: v for k, v in service_levels[pair].items() if k not in ("skuCode", "locationCode")}
            self.check(f"position {pair}", row, pos.figures())
        for a in data["all"]:
            sku = a["skuCode"]
            self.check(f"availability {sku}", (a["available"], a["oversold"]), (m.available(sku), m.oversold(sku)))
            locs = sorted((x["skuCode"], x["locationCode"]) for x in a["locations"])
            active = {x.code for x in m.active_locations()}
            behind = sorted(p for p in model_levels if p[0] == sku and p[1] in active)
            self.check(f"availability {sku} locations", locs, behind)
            self._version_moves((sku, None), a["version"], (a["available"], a["oversold"], str(a["locations"])))
        self.check("availability SKUs", sorted(a["skuCode"] for a in data["all"]), SKUS)
        for alias, channel in (("web", "WEB"), ("pos", "POS")):
            for a in data[alias]:
                sku = a["skuCode"]
                self.check(f"availability {sku} on {channel}", a["available"], m.channel_available(channel, sku))
                self._version_moves((sku, channel), a["version"], a["available"])
        seen = set()
        for cart in CARTS:
            for res in data[cart]:
                seen.add(res["id"])
                self._compare_view(f"reservations(cartRef: {cart})", res)
        self.check("reservations of the carts", sorted(seen), sorted(m.reservations))

    def _version_moves(self, key: tuple[str, str | None], version: int, figure: Any) -> None:
        before = self.availability_seen.get(key)
        if before is not None:
            old_version, old_figure = before
            if version < old_version:
                self.fail(f"Availability.version of {key} went back: {old_version} -> {version}")
            if figure != old_figure and version <= old_version:
                self.fail(f"Availability.version of {key} stayed {version} while {old_figure} -> {figure}")
        self.availability_seen[key] = (version, figure)


def _seeds() -> list[int]:
    if ONLY_SEED is not None:
        return [int(ONLY_SEED)]
    return list(range(SEEDS))


@pytest.mark.slow  # 12 seeds x 150 steps over HTTP (./dev fast leaves it out)
@pytest.mark.parametrize("seed", _seeds())
async def test_service_agrees_with_the_reference_model(pg_api: Api, seed: int) -> None:
    now = [NOW0]
    pg_api.ctx.clock = lambda: now[0]
    driver = Driver(pg_api, random.Random(seed), Model(NOW0), [], now)
    await driver.setup()
    await driver.compare_state()
    for i in range(STEPS):
        driver.log.append(f"# step {i}")
        try:
            await driver.step()
        except Mismatch as exc:
            raise Mismatch(f"seed {seed}, step {i}: {exc}") from None
    driver.seen["backorder covered by arrivals"] = driver.model.covered
    print(f"seed {seed}: {dict(sorted(driver.seen.items()))}")
