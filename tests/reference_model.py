"""A pure reference model of the public contract (docs: /work/shared/design/contract.md, README "The model").

Written from the contract's words, not from app/: plain Python, no database, no imports from app/.
tests/test_differential.py drives it and the real service with the same random steps and compares
every acknowledgement, position and availability figure after each step.

Where the contract leaves a point open, the choice made here is named in a comment starting with
"OPEN:" so a reader can tell a rule of the contract from a choice of this model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

Pair = tuple[str, str]  # (sku code, location code)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # every figure the API returns is a GraphQL Int
MAX_QUANTITY = 1_000_000_000  # README, Events: |quantity| of one event at most this (INVALID_QUANTITY)
MAX_UNITS_PER_RESERVATION = 1000  # README, Limits: the default of STOCKWIRE_MAX_UNITS_PER_RESERVATION


class OutOfRange(Exception):
    """An event would take a figure beyond what the API can return (QUANTITY_OUT_OF_RANGE)."""


POSITIVE = {
    "RECEIVED",
    "INCOMING",
    "SOLD",
    "ORDER_PLACED",
    "ORDER_CANCELLED",
    "SHIPPED",
    "RETURNED",
    "DAMAGED",
    "REPAIRED",
    "WRITTEN_OFF",
    "TRANSFER_OUT",
    "TRANSFER_IN",
}


@dataclass
class Position:
    on_hand: int = 0
    committed: int = 0
    reserved: int = 0
    unavailable: int = 0
    safety_stock: int = 0
    incoming: int = 0
    version: int = 0
    # of `incoming`, units promised to backorders (any channel, any reservation state) not arrived yet:
    # an expected unit can be promised once (README, Channels); not a StockLevel field
    backordered: int = 0
    # late-event bookkeeping: when the last applied count occurred, and the on-hand effects applied
    # since the beginning as (occurredAt, effect); a count keeps only those strictly after its time
    counted_at: datetime | None = None
    on_hand_effects: list[tuple[datetime, int]] = field(default_factory=list)

    @property
    def available(self) -> int:
        return self.on_hand - self.committed - self.reserved - self.unavailable - self.safety_stock

    @property
    def oversold(self) -> int:
        return max(0, self.committed + self.reserved + self.unavailable - self.on_hand)

    def figures(self) -> dict[str, int]:
        return {
            "onHand": self.on_hand,
            "committed": self.committed,
            "reserved": self.reserved,
            "unavailable": self.unavailable,
            "safetyStock": self.safety_stock,
            "incoming": self.incoming,
            "available": self.available,
            "oversold": self.oversold,
            "version": self.version,
        }


@dataclass
class Location:
    code: str
    priority: int = 100
    active: bool = True
    count_authority: str | None = None


@dataclass
class Channel:
    code: str
    locations: list[str]
    safety_buffer_units: int = 0
    safety_buffer_percent: float | None = None
    allocation_percent: float | None = None
    allocation_cap: int | None = None
    out_of_stock_threshold: int = 0
    backorder_limit: int | None = None


@dataclass
class Line:
    """One (SKU, location) of a reservation: `stock` units held there, `backordered` units promised
    against the incoming units there, of which `open` have not arrived yet (still counted against the
    channel's limit and the position's incoming, whatever the reservation's state)."""

    sku: str
    location: str
    stock: int
    backordered: int = 0
    open: int = 0
    expected_at: datetime | None = None


@dataclass
class Reservation:
    id: str
    status: str
    expires_at: datetime
    lines: list[Line]
    channel: str | None
    cart_ref: str | None
    created_at: datetime
    order_ref: str | None = None


@dataclass(frozen=True)
class Outcome:
    """An acknowledgement: what the service must answer."""

    errors: tuple[str, ...] = ()
    value: Any = None


class Model:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.skus: set[str] = set()
        self.locations: dict[str, Location] = {}
        self.channels: dict[str, Channel] = {}
        self.positions: dict[Pair, Position] = {}
        # (source, externalId) -> (content, version of its position after it)
        self.events: dict[tuple[str, str], tuple[tuple[Any, ...], int | None]] = {}
        self.reservations: dict[str, Reservation] = {}
        self.idempotency: dict[str, tuple[Any, str]] = {}  # key -> (lines fingerprint, reservation id)
        # units each (channel, sku) promised as backorders and not arrived yet, whatever the state of
        # their reservation: counted until covered by arrivals or the reservation is released or expires
        self.backordered: dict[tuple[str, str], int] = {}
        # expectedAt of every recorded INCOMING per position
        self.expected: dict[Pair, list[datetime]] = {}
        self.covered = 0  # promises covered by arrivals (what the run exercised)

    # --- catalogue ---------------------------------------------------------------------------------

    def add_sku(self, code: str) -> None:
        self.skus.add(code)

    def add_location(self, loc: Location) -> None:
        self.locations[loc.code] = loc

    def upsert_channel(self, ch: Channel) -> None:
        self.channels[ch.code] = ch

    def _position(self, pair: Pair) -> Position:
        return self.positions.setdefault(pair, Position())

    @staticmethod
    def _changed(pos: Position) -> None:
        pos.version += 1

    # --- time --------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock. A reservation past expiresAt is EXPIRED at once (contract), and its units are
        given back (the sweeper; the driver runs it right after, so the figures compare at once)."""
        self.now += timedelta(seconds=seconds)
        for r in sorted(self.reservations.values(), key=lambda r: r.id):
            if r.status == "ACTIVE" and self.now >= r.expires_at:
                self._give_back(r)
                r.status = "EXPIRED"

    def expiry_boundaries(self) -> list[datetime]:
        return [r.expires_at for r in self.reservations.values() if r.status == "ACTIVE"]

    # --- events ------------------------------------------------------------------------------------

    @staticmethod
    def content(e: dict[str, Any]) -> tuple[Any, ...]:
        return (
            e["type"],
            e["skuCode"],
            e["locationCode"],
            e["quantity"],
            e["occurredAt"],
            e.get("reason"),
            e.get("reference"),
            e.get("toLocationCode"),
            e.get("expectedAt"),
        )

    def _invalid(self, e: dict[str, Any]) -> list[str]:
        """Every code the event is refused with (an unknown SKU and a bad quantity are both reported)."""
        t, q = e["type"], e["quantity"]
        codes = []
        if e["skuCode"] not in self.skus:
            codes.append("UNKNOWN_SKU")
        if e["locationCode"] not in self.locations:
            codes.append("UNKNOWN_LOCATION")
        if e.get("toLocationCode") is not None and e["toLocationCode"] not in self.locations:
            codes.append("UNKNOWN_LOCATION")
        if (
            abs(q) > MAX_QUANTITY
            or (t == "ADJUSTED" and q == 0)
            or (t in ("COUNTED", "SAFETY_STOCK_SET") and q < 0)
            or (t in POSITIVE and q <= 0)
        ):
            codes.append("INVALID_QUANTITY")
        return codes

    def record(self, batch: list[dict[str, Any]], occurred: list[datetime]) -> Outcome:
        """recordInventoryEvents (atomic): every event or none. `occurred` are the parsed occurredAt."""
        errors: list[str] = []
        seen: dict[tuple[str, str], tuple[Any, ...]] = dict((k, c) for k, (c, _) in self.events.items())
        for e in batch:
            # OPEN: an invalid event is also checked against earlier content: every problem is reported
            errors += self._invalid(e)
            key = (e["source"], e["externalId"])
            if key in seen and seen[key] != self.content(e):
                errors.append("EVENT_CONFLICT")
            seen.setdefault(key, self.content(e))
        if errors:
            return Outcome(tuple(sorted(set(errors))))
        before = copy.deepcopy(self.__dict__)
        results = []
        try:
            for i, (e, at) in enumerate(zip(batch, occurred, strict=True)):
                key = (e["source"], e["externalId"])
                if key in self.events:
                    # a repeat, in this batch or a later one: the version its first occurrence recorded
                    results.append((i, "DUPLICATE", self.events[key][1], 0))
                    continue
                status, version, drift = self._apply(e, at)
                self.events[key] = (self.content(e), version)
                results.append((i, status, version, drift))
        except OutOfRange:
            self.__dict__.update(before)  # atomic: the whole batch is refused, nothing applied
            return Outcome(("QUANTITY_OUT_OF_RANGE",))
        return Outcome((), results)

    def _check_range(self, sku: str, after: dict[Pair, Position]) -> None:
        """README, Events: no figure of a position, nor a sum over the SKU's positions (on hand above 0,
        claims plus on hand below 0, which bound the summed oversold; incoming), beyond
        ±2,147,483,647. The model never stores one out of range, so any figure
        out of range after the event means the event takes it there."""
        for p in after.values():
            figures = (p.on_hand, p.committed, p.reserved, p.unavailable, p.safety_stock, p.incoming)
            if any(not INT_MIN <= f <= INT_MAX for f in (*figures, p.available, p.oversold)):
                raise OutOfRange
        rows = [after.get(pair, pos) for pair, pos in self.positions.items() if pair[0] == sku]
        rows += [p for pair, p in after.items() if pair not in self.positions]
        on_hand = sum(max(0, p.on_hand) for p in rows)
        claims = sum(p.committed + p.reserved + p.unavailable + p.safety_stock for p in rows)
        incoming = sum(p.incoming for p in rows)
        below_zero = sum(max(0, -p.on_hand) for p in rows)
        if max(on_hand, claims + below_zero, incoming) > INT_MAX:
            raise OutOfRange

    def _apply(self, e: dict[str, Any], at: datetime) -> tuple[str, int | None, int]:
        t, q = e["type"], e["quantity"]
        pair = (e["skuCode"], e["locationCode"])
        pos = self._position(pair)
        loc = self.locations[e["locationCode"]]
        if t == "COUNTED":
            if loc.count_authority is not None and e["source"] != loc.count_authority:
                return "FLAGGED", self._version_or_none(pair), 0
            if pos.counted_at is not None and at < pos.counted_at:
                return "SUPERSEDED", self._version_or_none(pair), 0
            # onHand := q as of T, plus everything that occurred after T (events at exactly T that
            # arrived before the count are part of what it counted)
            later = sum(d for when, d in pos.on_hand_effects if when > at)
            before = pos.on_hand
            self._check_range(pair[0], {pair: replace(pos, on_hand=q + later)})
            pos.on_hand = q + later
            pos.counted_at = at
            # OPEN: "version +1 on every change of this row" read as a change of its quantities: a
            # count that confirms the stock moves no figure and no version (README: it sends nothing)
            if pos.on_hand != before:
                self._changed(pos)
            return "APPLIED", self._version_or_none(pair), 0
        d_on_hand = 0
        d_committed = d_unavailable = d_incoming = 0
        drift = 0

        def take(wanted: int, there: int) -> int:
            return min(wanted, max(0, there))

        if t in ("RECEIVED", "TRANSFER_IN"):
            d_on_hand, d_incoming = q, -take(q, pos.incoming)
        elif t == "INCOMING":
            d_incoming = q
        elif t in ("ADJUSTED", "RETURNED"):
            d_on_hand = q
        elif t in ("SOLD", "TRANSFER_OUT"):
            d_on_hand = -q
        elif t == "ORDER_PLACED":
            d_committed = q
        elif t == "ORDER_CANCELLED":
            d_committed = -take(q, pos.committed)
            drift = q + d_committed
        elif t == "SHIPPED":
            d_on_hand, d_committed = -q, -take(q, pos.committed)
            drift = q + d_committed
        elif t == "DAMAGED":
            d_unavailable = q
        elif t == "REPAIRED":
            d_unavailable = -take(q, pos.unavailable)
            drift = q + d_unavailable
        elif t == "WRITTEN_OFF":
            d_on_hand, d_unavailable = -q, -take(q, pos.unavailable)
            drift = q + d_unavailable
        elif t == "SAFETY_STOCK_SET":
            pass
        else:  # pragma: no cover
            raise AssertionError(t)
        status = "APPLIED"
        if d_on_hand and pos.counted_at is not None and at < pos.counted_at:
            # the count already includes it: recorded, its other effects apply, its on-hand effect not
            # OPEN: an event with no on-hand effect has nothing to supersede and stays APPLIED
            status, d_on_hand = "SUPERSEDED", 0
        after = {
            pair: replace(
                pos,
                on_hand=pos.on_hand + d_on_hand,
                committed=pos.committed + d_committed,
                unavailable=pos.unavailable + d_unavailable,
                incoming=pos.incoming + d_incoming,
                safety_stock=q if t == "SAFETY_STOCK_SET" else pos.safety_stock,
            )
        }
        to = e.get("toLocationCode") if t == "TRANSFER_OUT" else None
        if to:
            dest_pair = (e["skuCode"], to)
            dest_now = after.get(dest_pair) or self.positions.get(dest_pair) or Position()
            after[dest_pair] = replace(dest_now, incoming=dest_now.incoming + q)
        self._check_range(pair[0], after)
        if d_incoming < 0:
            # expected units arrived: they cover the backorders promised against them first
            self._cover(pair, -d_incoming)
        if t == "INCOMING" and e.get("expectedAt"):
            self.expected.setdefault(pair, []).append(datetime.fromisoformat(e["expectedAt"]))
        before = (pos.on_hand, pos.committed, pos.unavailable, pos.incoming, pos.safety_stock)
        pos.on_hand += d_on_hand
        pos.committed += d_committed
        pos.unavailable += d_unavailable
        pos.incoming += d_incoming
        if t == "SAFETY_STOCK_SET":
            pos.safety_stock = q
        if d_on_hand:
            pos.on_hand_effects.append((at, d_on_hand))
        if (pos.on_hand, pos.committed, pos.unavailable, pos.incoming, pos.safety_stock) != before:
            self._changed(pos)
        version = self._version_or_none(pair)
        if to:
            dest = self._position((e["skuCode"], to))
            dest.incoming += q
            self._changed(dest)
        return status, version, drift

    def _version_or_none(self, pair: Pair) -> int | None:
        pos = self.positions.get(pair)
        return pos.version if pos is not None and pos.version else None

    # --- availability ------------------------------------------------------------------------------

    def set_active(self, code: str, active: bool) -> None:
        self.locations[code].active = active

    def active_locations(self) -> list[Location]:
        return sorted((x for x in self.locations.values() if x.active), key=lambda x: (x.priority, x.code))

    def available(self, sku: str) -> int:
        return sum(
            max(0, self.positions[(sku, x.code)].available)
            for x in self.active_locations()
            if (sku, x.code) in self.positions
        )

    def oversold(self, sku: str) -> int:
        return sum(
            self.positions[(sku, x.code)].oversold for x in self.active_locations() if (sku, x.code) in self.positions
        )

    def _channel_locations(self, ch: Channel) -> list[Location]:
        return [x for x in self.active_locations() if x.code in ch.locations]

    def mine(self, channel: str, sku: str) -> int:
        return sum(
            ln.stock
            for r in self.reservations.values()
            if r.status == "ACTIVE" and r.channel == channel
            for ln in r.lines
            if ln.sku == sku
        )

    def channel_figure(self, channel: str, sku: str) -> tuple[int, int]:
        """(figure from stock after steps 1-5, units step 6 adds against incoming)."""
        ch = self.channels[channel]
        places = self._channel_locations(ch)
        pool = sum(max(0, self.positions[(sku, x.code)].available) for x in places if (sku, x.code) in self.positions)
        mine = self.mine(channel, sku)
        base = pool + mine
        figure = base - ch.safety_buffer_units
        if ch.safety_buffer_percent is not None:
            figure -= math.ceil(Decimal(base) * Decimal(str(ch.safety_buffer_percent)) / 100)
        if ch.allocation_percent is not None:
            figure = min(figure, math.floor(Decimal(base) * Decimal(str(ch.allocation_percent)) / 100))
        if ch.allocation_cap is not None:
            figure = min(figure, ch.allocation_cap)
        figure = max(0, figure - mine)
        if figure < ch.out_of_stock_threshold:
            figure = 0
        extra = 0
        if ch.backorder_limit is not None:
            # Σ incoming not yet promised: a unit promised to any channel's backorder is gone for all
            incoming = sum(max(0, p.incoming - p.backordered) for p in self._at(sku, places))
            extra = max(0, min(ch.backorder_limit - self.backordered.get((channel, sku), 0), incoming))
        return figure, extra

    def _at(self, sku: str, places: list[Location]) -> list[Position]:
        return [self.positions[(sku, x.code)] for x in places if (sku, x.code) in self.positions]

    def channel_available(self, channel: str, sku: str) -> int:
        figure, extra = self.channel_figure(channel, sku)
        return figure + extra

    # --- reservations ------------------------------------------------------------------------------

    @staticmethod
    def lines_key(lines: list[dict[str, Any]]) -> Any:
        return tuple(sorted((ln["skuCode"], ln.get("locationCode") or "", ln["quantity"]) for ln in lines))

    def reserve(
        self,
        rid: str | None,
        lines: list[dict[str, Any]],
        key: str,
        ttl: int,
        channel: str | None = None,
        cart_ref: str | None = None,
    ) -> Outcome:
        """`rid`: the id the service gave (the model cannot invent the service's ids)."""
        # OPEN: the request's own shape is checked before its idempotency key is looked up
        malformed = set()
        if not 1 <= ttl <= 3600:
            malformed.add("INVALID_TTL")
        if any(ln["quantity"] <= 0 for ln in lines):
            malformed.add("INVALID_QUANTITY")
        if sum(max(0, ln["quantity"]) for ln in lines) > MAX_UNITS_PER_RESERVATION:
            malformed.add("INVALID_QUANTITY")  # README, Limits
        named = [(ln["skuCode"], ln.get("locationCode")) for ln in lines]
        if len(set(named)) < len(named):
            malformed.add("DUPLICATE_LINE")
        if malformed:
            return Outcome(tuple(sorted(malformed)))
        fingerprint = self.lines_key(lines)
        if key in self.idempotency:
            first, first_id = self.idempotency[key]
            if first != fingerprint:
                return Outcome(("IDEMPOTENCY_CONFLICT",))
            return Outcome((), first_id)
        for ln in lines:
            if ln["skuCode"] not in self.skus:
                return Outcome(("UNKNOWN_SKU",))
            if ln.get("locationCode") is not None and ln["locationCode"] not in self.locations:
                return Outcome(("UNKNOWN_LOCATION",))
        if channel is not None and channel not in self.channels:
            return Outcome(("UNKNOWN_CHANNEL",))
        for ln in lines:
            if ln.get("locationCode") is not None and not self.locations[ln["locationCode"]].active:
                return Outcome(("INACTIVE_LOCATION",))  # README's code for it
        taken: list[Line] = []
        free = {p: pos.available for p, pos in self.positions.items()}
        for ln in lines:
            sku, q = ln["skuCode"], ln["quantity"]
            if channel is not None:
                figure, extra = self.channel_figure(channel, sku)
                if q > figure + extra:
                    return Outcome(("INSUFFICIENT_STOCK",))
                from_stock = min(q, figure)
                places = [x.code for x in self._channel_locations(self.channels[channel])]
                split = self._split(sku, from_stock, places, free)
                # units beyond the stock part are promised against incoming, in the same location order
                unpromised = {
                    (sku, c): self.positions[(sku, c)].incoming - self.positions[(sku, c)].backordered
                    for c in places
                    if (sku, c) in self.positions
                }
                promised = self._split(sku, q - from_stock, places, unpromised)
                if split is None or promised is None:
                    return Outcome(("INSUFFICIENT_STOCK",))
                here = {ln.location: ln for ln in split}
                for b in promised:
                    ln = here.setdefault(b.location, Line(sku, b.location, 0))
                    ln.backordered = ln.open = b.stock
                    ln.expected_at = min(
                        (d for d in self.expected.get((sku, b.location), []) if d >= self.now), default=None
                    )
                taken += [here[c] for c in places if c in here]
            elif ln.get("locationCode") is not None:
                pair = (sku, ln["locationCode"])
                if free.get(pair, 0) < q:
                    return Outcome(("INSUFFICIENT_STOCK",))
                free[pair] -= q
                taken.append(Line(sku, ln["locationCode"], q))
            else:
                split = self._split(sku, q, [x.code for x in self.active_locations()], free)
                if split is None:
                    return Outcome(("INSUFFICIENT_STOCK",))
                taken += split
        assert rid is not None, "the service refused what the model holds"
        for ln in taken:
            if ln.stock:
                pos = self.positions[(ln.sku, ln.location)]
                pos.reserved += ln.stock
                self._changed(pos)
            if ln.backordered:
                assert channel is not None
                self.positions[(ln.sku, ln.location)].backordered += ln.backordered
                self.backordered[(channel, ln.sku)] = self.backordered.get((channel, ln.sku), 0) + ln.backordered
        expires_at = self.now + timedelta(seconds=ttl)
        self.reservations[rid] = Reservation(rid, "ACTIVE", expires_at, taken, channel, cart_ref, self.now)
        self.idempotency[key] = (fingerprint, rid)
        return Outcome((), rid)

    def _split(self, sku: str, q: int, places: list[str], free: dict[Pair, int]) -> list[Line] | None:
        """Stock for a line without a location: active locations in priority order (then code), each
        giving what it has, so the line may split. None when they don't have q together."""
        out = []
        left = q
        for code in places:
            if left == 0:
                break
            there = max(0, free.get((sku, code), 0))
            got = min(left, there)
            if got:
                free[(sku, code)] -= got
                out.append(Line(sku, code, got))
                left -= got
        return None if left else out

    def _give_back(self, r: Reservation) -> None:
        """Released or expired: the stock part goes back, and promises not covered yet are forgotten
        (the expected units may be promised to someone else)."""
        for ln in r.lines:
            pos = self.positions[(ln.sku, ln.location)]
            if ln.stock:
                pos.reserved -= ln.stock
                self._changed(pos)
            if ln.open:
                assert r.channel is not None
                pos.backordered -= ln.open
                self.backordered[(r.channel, ln.sku)] -= ln.open
                ln.open = 0

    def _cover(self, pair: Pair, arrived: int) -> None:
        """README, Channels: arriving units (RECEIVED, TRANSFER_IN) cover the oldest promises at the
        position first. A committed order's units are in `committed` already: the promise just ends; an
        ACTIVE reservation's are held for it from the arriving stock (reserved, one changing row each).
        Either way they stop counting against the channel's limit and the position's incoming."""
        pos = self.positions[pair]
        left = min(pos.backordered, arrived)
        if left <= 0:
            return
        # OPEN: "oldest" is the reservation's creation; reservations made at one instant in id order
        waiting = sorted(
            (
                (r, ln)
                for r in self.reservations.values()
                for ln in r.lines
                if (ln.sku, ln.location) == pair and ln.open
            ),
            key=lambda x: (x[0].created_at, x[0].id),
        )
        covered = 0
        for r, ln in waiting:
            take = min(left - covered, ln.open)
            if take <= 0:
                break
            ln.open -= take
            if r.status == "ACTIVE":
                ln.stock += take
                ln.backordered -= take
                pos.reserved += take
                self._changed(pos)
            assert r.channel is not None
            self.backordered[(r.channel, ln.sku)] -= take
            covered += take
            self.covered += 1
        pos.backordered -= left

    def commit(self, rid: str, order_ref: str) -> Outcome:
        r = self.reservations.get(rid)
        if r is None:
            return Outcome(("RESERVATION_NOT_FOUND",))
        if r.status == "RELEASED":
            return Outcome(("RESERVATION_NOT_ACTIVE",))
        if r.status == "EXPIRED":
            return Outcome(("RESERVATION_EXPIRED",))
        if r.status == "COMMITTED":
            # OPEN (issue 11 item 6): another orderRef on a committed reservation is refused
            return Outcome(() if order_ref == r.order_ref else ("RESERVATION_NOT_ACTIVE",), rid)
        for ln in r.lines:
            # the order takes the stock part and the backordered units (README: commit moves both into
            # `committed`); the backordered ones stay promised against incoming until they arrive
            if ln.stock or ln.backordered:
                pos = self.positions[(ln.sku, ln.location)]
                pos.reserved -= ln.stock
                pos.committed += ln.stock + ln.backordered
                self._changed(pos)
        r.status, r.order_ref = "COMMITTED", order_ref
        return Outcome((), rid)

    def release(self, rid: str) -> Outcome:
        r = self.reservations.get(rid)
        if r is None:
            return Outcome(("RESERVATION_NOT_FOUND",))
        if r.status == "COMMITTED":
            return Outcome(("RESERVATION_NOT_ACTIVE",))
        if r.status == "ACTIVE":
            self._give_back(r)
            r.status = "RELEASED"
        return Outcome((), rid)

    def extend(self, rid: str, ttl: int) -> Outcome:
        # OPEN: a malformed input is refused before the reservation is looked up
        if not 1 <= ttl <= 3600:
            return Outcome(("INVALID_TTL",))
        r = self.reservations.get(rid)
        if r is None:
            return Outcome(("RESERVATION_NOT_FOUND",))
        if r.status == "EXPIRED":
            return Outcome(("RESERVATION_EXPIRED",))
        if r.status != "ACTIVE":
            return Outcome(("RESERVATION_NOT_ACTIVE",))
        r.expires_at = self.now + timedelta(seconds=ttl)
        return Outcome((), rid)

    # --- views the driver compares -----------------------------------------------------------------

    def view(self, rid: str) -> dict[str, Any]:
        r = self.reservations[rid]
        return {
            "id": rid,
            "status": r.status,
            "expiresAt": r.expires_at,
            "cartRef": r.cart_ref,
            "orderRef": r.order_ref,
            "lines": self.lines_of(r),
        }

    @staticmethod
    def lines_of(r: Reservation) -> list[tuple[str, str, int, int, datetime | None]]:
        """(sku, location, quantity, backordered, expectedAt) per (sku, location): quantity is the whole
        line (stock + backordered, README Reservations); expectedAt only while something is backordered."""
        merged: dict[Pair, tuple[int, int, datetime | None]] = {}
        for ln in r.lines:
            q, b, at = merged.get((ln.sku, ln.location), (0, 0, None))
            merged[(ln.sku, ln.location)] = (q + ln.stock + ln.backordered, b + ln.backordered, at or ln.expected_at)
        return sorted((s, loc, q, b, at if b else None) for (s, loc), (q, b, at) in merged.items())
