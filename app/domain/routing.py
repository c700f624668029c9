"""Which locations ship an order: routing strategies combined in a ranked order per channel.

A channel ranks strategies the way commerce platforms let merchants rank routing rules; a channel that
ranks none gets `DEFAULT_RANKING` (fewest shipments, then closest, then priority). Exclusions (inactive,
not linked to the channel, at daily order capacity) always apply first and cannot be switched off, and
the location code is always the last tie-break so the same input routes the same way every time.

Everything here is pure: the caller loads the candidates (with what each can sell now), calls `route`,
and turns `RoutingDecision.unserved` into a userError or a backorder as the channel allows.

How FEWEST_SHIPMENTS works (a greedy set cover, fast for 20 lines over 200 locations):
- Each step picks one location and compares locations by the ranking in order; FEWEST_SHIPMENTS
  compares, at its place in the ranking, how many of the *remaining lines* a location can ship in full
  (more is better), then how many units it holds of lines that no location can ship in full.
  So with it ranked first, a location that ships everything wins when there is one (ties go to the
  strategies ranked after it), and otherwise the location covering the most whole lines goes next.
- The picked location ships every remaining line it can ship in full. It ships part of a line only when
  no eligible location can ship that line in full, because splitting a line that someone could ship
  whole adds a parcel for nothing.
- Strategies ranked *above* FEWEST_SHIPMENTS win over it: (CLOSEST, FEWEST_SHIPMENTS) ships each line
  whole from the closest location that can, even if a farther one could ship the whole order.

Without FEWEST_SHIPMENTS in the ranking, locations are taken in ranked order and each ships as much of
every remaining line as it holds. With `allow_split=False` there is at most one shipment: the best
ranked location that ships everything, else the one shipping the most whole lines, then most units;
the rest is unserved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

# The IUGG mean Earth radius; the choice between mean radii moves distances by well under 1 %.
EARTH_RADIUS_KM = 6371.0088

# Contract default for a location that states no priority.
DEFAULT_PRIORITY = 100


class RoutingStrategy(StrEnum):
    PRIORITY = "PRIORITY"  # lower `priority` first
    CLOSEST = "CLOSEST"  # shortest great-circle distance to the destination
    FEWEST_SHIPMENTS = "FEWEST_SHIPMENTS"  # avoid splits; greedy cover when one location can't
    LOWEST_COST = "LOWEST_COST"  # lowest per-location shipping cost setting


DEFAULT_RANKING: tuple[RoutingStrategy, ...] = (
    RoutingStrategy.FEWEST_SHIPMENTS,
    RoutingStrategy.CLOSEST,
    RoutingStrategy.PRIORITY,
)


class Exclusion(StrEnum):
    """Why a location takes no part in routing; checked in this order, the first that applies is given."""

    INACTIVE = "inactive"
    NOT_LINKED = "not linked to the channel"
    AT_CAPACITY = "at daily order capacity"


@dataclass(frozen=True, slots=True)
class GeoPoint:
    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        # A destination out of range would route silently to a meaningless "closest" location.
        if not -90.0 <= self.latitude <= 90.0:
            raise ValueError(f"latitude {self.latitude} is outside -90..90")
        if not -180.0 <= self.longitude <= 180.0:
            raise ValueError(f"longitude {self.longitude} is outside -180..180")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A location that might ship the order, with what it can sell now of each SKU."""

    location_code: str
    active: bool = True
    linked: bool = True  # to the order's channel; True when the order names no channel
    priority: int = DEFAULT_PRIORITY
    latitude: float | None = None
    longitude: float | None = None
    shipping_cost: Decimal | None = None
    daily_capacity: int | None = None  # orders per day; None means unlimited
    orders_today: int = 0
    available: Mapping[str, int] = field(default_factory=dict)  # sku_code -> units available now

    @property
    def exclusion(self) -> Exclusion | None:
        if not self.active:
            return Exclusion.INACTIVE
        if not self.linked:
            return Exclusion.NOT_LINKED
        if self.daily_capacity is not None and self.orders_today >= self.daily_capacity:
            return Exclusion.AT_CAPACITY
        return None


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku_code: str
    quantity: int

    def __post_init__(self) -> None:
        # The caller reports INVALID_QUANTITY before routing; reaching here with one is a bug.
        if self.quantity < 1:
            raise ValueError(f"quantity for {self.sku_code} must be at least 1, got {self.quantity}")


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    lines: tuple[OrderLine, ...]
    destination: GeoPoint | None = None  # the order's coordinates or its postal centroid
    ranking: tuple[RoutingStrategy, ...] | None = None  # None: DEFAULT_RANKING
    allow_split: bool = True


class ShipmentLine(NamedTuple):
    sku_code: str
    quantity: int


class Shortfall(NamedTuple):
    sku_code: str
    missing_quantity: int


@dataclass(frozen=True, slots=True)
class Shipment:
    location_code: str
    lines: tuple[ShipmentLine, ...]

    @property
    def units(self) -> int:
        return sum(line.quantity for line in self.lines)


class CandidateScore(NamedTuple):
    """How the router saw one location when the order arrived, so a merchant can see why it lost.

    A named tuple rather than a frozen dataclass: one is built per location per order (200 and more),
    and a frozen dataclass costs about four times as much to build."""

    location_code: str
    excluded_reason: Exclusion | None
    rank: int | None  # 1 = preferred first; None when excluded
    covers_lines: int  # lines it could ship in full
    covers_units: int  # units of the order it holds
    distance_km: float | None  # None without a destination or without the location's coordinates
    priority: int
    shipping_cost: Decimal | None


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    shipments: tuple[Shipment, ...]
    unserved: tuple[Shortfall, ...]
    candidates: tuple[CandidateScore, ...]
    reason: str

    @property
    def fully_served(self) -> bool:
        return not self.unserved


def _distance_from(destination: GeoPoint) -> Callable[[float, float], float]:
    # The destination's trigonometry once, not once per location (200 locations per order).
    radians, sin, cos = math.radians, math.sin, math.cos
    phi0 = radians(destination.latitude)
    cos0 = cos(phi0)
    lon0 = destination.longitude
    diameter = 2 * EARTH_RADIUS_KM

    def distance(latitude: float, longitude: float) -> float:
        phi = radians(latitude)
        a = sin((phi - phi0) / 2)
        b = sin(radians(longitude - lon0) / 2)
        h = a * a + cos0 * cos(phi) * b * b
        # Rounding can push h a hair past 1 for antipodal points, and asin would then fail.
        return diameter * math.asin(math.sqrt(h if h < 1.0 else 1.0))

    return distance


def great_circle_km(a: GeoPoint, b: GeoPoint) -> float:
    """Haversine distance on a sphere of the mean Earth radius."""
    return _distance_from(a)(b.latitude, b.longitude)


def effective_ranking(ranking: Sequence[RoutingStrategy] | None) -> tuple[RoutingStrategy, ...]:
    """The ranking a request routes by: the default when none is configured, repeats dropped."""
    if ranking is None:
        return DEFAULT_RANKING
    return tuple(dict.fromkeys(ranking))


_STRATEGY_WORDS = {
    RoutingStrategy.PRIORITY: "priority",
    RoutingStrategy.CLOSEST: "closest",
    RoutingStrategy.FEWEST_SHIPMENTS: "fewest shipments",
    RoutingStrategy.LOWEST_COST: "lowest cost",
}


@dataclass(slots=True, eq=False)
class _Site:
    """Working state for one eligible location during one routing call (mutable on purpose: the greedy
    cover updates it in place so a step costs one pass over the locations, not a recount)."""

    candidate: Candidate
    held: dict[int, int]  # sku index -> units it can give; only SKUs of the order, only above 0
    distance_km: float | None
    # One value per static strategy in ranked order, then the code; lower is better throughout.
    static_key: tuple[object, ...]
    covers_lines: int  # lines it could ship in full when the order arrived
    covers_units: int  # units of the order it held then
    full: int  # remaining lines it can ship in full
    before: int = 0  # dense rank by the strategies ranked above FEWEST_SHIPMENTS
    after: int = 0  # unique rank by the strategies ranked below it, then code
    alive: bool = True
    taken: dict[int, int] = field(default_factory=dict)  # sku index -> units it ships

    @property
    def code(self) -> str:
        return self.candidate.location_code


# "No figure" sorts after every figure: a location without coordinates after every located one, a
# location without a shipping cost after every costed one.
_NO_DISTANCE = math.inf
_NO_COST = Decimal("Infinity")


def _static_keys(
    statics: tuple[RoutingStrategy, ...], sites: list[_Site], has_destination: bool
) -> list[tuple[object, ...]]:
    """Each site's key: one value per static strategy in ranked order, then its code; lower is better.

    Built a column per strategy and zipped, which is several times cheaper than a key per site."""
    columns: list[list[object]] = []
    for strategy in statics:
        if strategy is RoutingStrategy.CLOSEST:
            if not has_destination:
                columns.append([0.0] * len(sites))  # nothing to be close to: every location ties
            else:
                # Millimetre noise between two equally far locations must not decide the route.
                columns.append([_NO_DISTANCE if s.distance_km is None else round(s.distance_km, 3) for s in sites])
        elif strategy is RoutingStrategy.PRIORITY:
            columns.append([s.candidate.priority for s in sites])
        else:
            columns.append(
                [_NO_COST if s.candidate.shipping_cost is None else s.candidate.shipping_cost for s in sites]
            )
    columns.append([s.candidate.location_code for s in sites])
    return list(zip(*columns, strict=True))


def _dense_ranks(sites: list[_Site], keys: list[tuple[object, ...]]) -> list[int]:
    """Rank per site (same order as `sites`), equal keys sharing a rank."""
    ranks = [0] * len(sites)
    previous: tuple[object, ...] | None = None
    rank = -1
    for i in sorted(range(len(sites)), key=keys.__getitem__):
        if keys[i] != previous:
            rank += 1
            previous = keys[i]
        ranks[i] = rank
    return ranks


def route(request: RoutingRequest, candidates: Sequence[Candidate]) -> RoutingDecision:
    ranking = effective_ranking(request.ranking)
    statics = tuple(s for s in ranking if s is not RoutingStrategy.FEWEST_SHIPMENTS)
    destination = request.destination
    has_destination = destination is not None
    distance_to = _distance_from(destination) if destination is not None else None

    # Lines of the same SKU should have been refused earlier (DUPLICATE_LINE); summing them keeps a
    # location from being asked twice for the same units.
    demand: dict[str, int] = {}
    for line in request.lines:
        demand[line.sku_code] = demand.get(line.sku_code, 0) + line.quantity
    skus = list(demand)
    index = {sku: j for j, sku in enumerate(skus)}
    need = [demand[s] for s in skus]
    n = len(skus)

    sites: list[_Site] = []
    excluded: list[CandidateScore] = []
    for c in candidates:
        distance = None
        if distance_to is not None and c.latitude is not None and c.longitude is not None:
            distance = distance_to(c.latitude, c.longitude)
        exclusion = c.exclusion
        if exclusion is not None:
            excluded.append(
                CandidateScore(c.location_code, exclusion, None, 0, 0, distance, c.priority, c.shipping_cost)
            )
            continue
        # Only what it can give: a location under water on a SKU must not cancel another's stock.
        available = c.available
        # Walk whichever is shorter: the order's SKUs or what the location lists.
        if len(available) <= n:
            held = {index[sku]: units for sku, units in available.items() if units > 0 and sku in index}
        else:
            held = {j: units for j, sku in enumerate(skus) if (units := available.get(sku, 0)) > 0}
        full = 0
        covered = 0
        for j, units in held.items():
            if units >= need[j]:
                full += 1
                covered += need[j]
            else:
                covered += units
        sites.append(_Site(c, held, distance, (), full, covered, full))
    for site, key in zip(sites, _static_keys(statics, sites, has_destination), strict=True):
        site.static_key = key

    # Each returns every eligible location in the order preferred as the order arrived (their ranks)
    # and the locations in the order they were picked (the shipments' order: the main parcel first).
    if not request.allow_split:
        preference, picks = _route_single(sites, need)
    elif RoutingStrategy.FEWEST_SHIPMENTS in ranking:
        preference, picks = _route_greedy_cover(sites, need, ranking)
    else:
        preference, picks = _route_in_order(sites, need)

    shipments = tuple(
        Shipment(s.code, tuple(ShipmentLine(skus[j], q) for j, q in sorted(s.taken.items()))) for s in picks if s.taken
    )
    shipped = [0] * n
    for site in picks:
        for j, q in site.taken.items():
            shipped[j] += q
    unserved = tuple(Shortfall(skus[j], need[j] - shipped[j]) for j in range(n) if shipped[j] < need[j])

    scores = tuple(
        CandidateScore(
            s.code,
            None,
            rank,
            s.covers_lines,
            s.covers_units,
            s.distance_km,
            s.candidate.priority,
            s.candidate.shipping_cost,
        )
        for rank, s in enumerate(preference, start=1)
    ) + tuple(sorted(excluded, key=lambda e: e.location_code))

    could_ship_all = [s for s in sites if s.covers_lines == n]
    reason = _reason(
        request,
        ranking,
        statics,
        shipments,
        unserved,
        could_ship_all,
        n,
        len(excluded),
    )
    return RoutingDecision(shipments, unserved, scores, reason)


def _route_in_order(sites: list[_Site], need: list[int]) -> tuple[list[_Site], list[_Site]]:
    """No FEWEST_SHIPMENTS: each location in ranked order ships what it holds of what is left."""
    order = sorted(sites, key=lambda s: s.static_key)
    left = list(need)
    for site in order:
        for j, units in site.held.items():
            q = min(units, left[j])
            if q > 0:
                site.taken[j] = q
                left[j] -= q
    return order, order


def _route_single(sites: list[_Site], need: list[int]) -> tuple[list[_Site], list[_Site]]:
    """Splitting is off: one location, the one shipping most whole lines, then most units, then ranking."""
    order = sorted(sites, key=lambda s: (-s.covers_lines, -s.covers_units, s.static_key))
    if order and order[0].covers_units > 0:
        best = order[0]
        for j, units in best.held.items():
            best.taken[j] = min(units, need[j])
    return order, order[:1]


def _route_greedy_cover(
    sites: list[_Site], need: list[int], ranking: tuple[RoutingStrategy, ...]
) -> tuple[list[_Site], list[_Site]]:
    # The static key holds the strategies above FEWEST_SHIPMENTS first, then those below it and the code.
    split_at = ranking.index(RoutingStrategy.FEWEST_SHIPMENTS)
    if split_at:
        before = _dense_ranks(sites, [s.static_key[:split_at] for s in sites])
        after = _dense_ranks(sites, [s.static_key[split_at:] for s in sites])
    else:
        before = [0] * len(sites)
        after = _dense_ranks(sites, [s.static_key for s in sites])
    for i, site in enumerate(sites):
        site.before, site.after = before[i], after[i]

    n = len(need)
    if split_at == 0 and n and any(s.full == n for s in sites):
        # The usual order: some location ships everything, so it is the first and only pick. Same
        # result as the loop below, without building its bookkeeping.
        preference = sorted(sites, key=lambda s: (-s.full, s.after))
        first = preference[0]
        first.taken = {j: need[j] for j in first.held}
        return preference, [first]

    need = list(need)
    left_lines = n
    holders: list[list[_Site]] = [[] for _ in range(n)]
    cover_count = [0] * n
    for site in sites:
        for j, units in site.held.items():
            holders[j].append(site)
            if units >= need[j]:
                cover_count[j] += 1

    def partial_units(site: _Site, uncoverable: list[int]) -> int:
        held = site.held
        return sum(min(held[j], need[j]) for j in uncoverable if j in held)

    # The preference as the order arrives, reported as each candidate's rank.
    uncoverable = [j for j in range(n) if cover_count[j] == 0]
    if uncoverable:
        preference = sorted(sites, key=lambda s: (s.before, -s.full, -partial_units(s, uncoverable), s.after))
    else:
        preference = sorted(sites, key=lambda s: (s.before, -s.full, s.after))

    # Locations holding none of the order can never be picked.
    pool = [s for s in sites if s.held]
    picks: list[_Site] = []
    while left_lines:
        uncoverable = [j for j in range(n) if need[j] > 0 and cover_count[j] == 0]
        best: _Site | None = None
        best_key: tuple[int, int, int, int] | None = None
        for site in pool:
            if not site.alive:
                continue
            partial = partial_units(site, uncoverable) if uncoverable else 0
            if site.full == 0 and partial == 0:
                continue  # nothing it could ship without splitting a line someone ships whole
            key = (site.before, -site.full, -partial, site.after)
            if best_key is None or key < best_key:
                best, best_key = site, key
        if best is None:
            break  # what is left, no eligible location holds
        picks.append(best)
        for j, held in best.held.items():
            if need[j] == 0:
                continue
            if held >= need[j]:
                best.taken[j] = need[j]
                for other in holders[j]:
                    if other.alive and other.held[j] >= need[j]:
                        other.full -= 1
                need[j] = 0
                left_lines -= 1
            elif cover_count[j] == 0:
                best.taken[j] = held
                was = need[j]
                need[j] -= held
                # A smaller remainder may now fit whole somewhere: those locations gain a line.
                for other in holders[j]:
                    if other.alive and other is not best and need[j] <= other.held[j] < was:
                        other.full += 1
                        cover_count[j] += 1
        # A picked location never becomes useful again: it shipped every line it could ship whole, and
        # any line it skipped is one some other location ships whole, so its remainder never shrinks.
        best.alive = False
    return preference, picks


def _describe(strategy: RoutingStrategy, site: _Site) -> str:
    if strategy is RoutingStrategy.CLOSEST:
        return f"closest ({site.distance_km:.0f} km)" if site.distance_km is not None else "closest"
    if strategy is RoutingStrategy.PRIORITY:
        return f"highest priority ({site.candidate.priority})"
    return f"lowest cost ({site.candidate.shipping_cost})"


def _why_this_one(winner: _Site, rivals: list[_Site], statics: tuple[RoutingStrategy, ...]) -> str:
    others = [r for r in rivals if r is not winner]
    if not others:
        return "the only location that could"
    runner_up = min(others, key=lambda s: s.static_key)
    for i, strategy in enumerate(statics):
        if winner.static_key[i] != runner_up.static_key[i]:
            return f"{_describe(strategy, winner)} of {len(rivals)} that could"
    return f"first by location code of {len(rivals)} that could"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _reason(
    request: RoutingRequest,
    ranking: tuple[RoutingStrategy, ...],
    statics: tuple[RoutingStrategy, ...],
    shipments: tuple[Shipment, ...],
    unserved: tuple[Shortfall, ...],
    could_ship_all: list[_Site],
    n: int,
    excluded: int,
) -> str:
    if n == 0:
        return "nothing to route"
    if not shipments:
        text = "no eligible location holds any of the order"
        if excluded:
            text += f" ({excluded} excluded)"
    elif len(shipments) == 1 and not unserved:
        winner = next(s for s in could_ship_all if s.code == shipments[0].location_code)
        text = f"{winner.code} ships all {_plural(n, 'line')}; " + _why_this_one(winner, could_ship_all, statics)
    elif len(shipments) == 1:
        only = shipments[0]
        text = f"{only.location_code} ships {len(only.lines)} of {_plural(n, 'line')}"
        if not request.allow_split:
            text = "splitting is off; " + text
    else:
        parts = ", ".join(f"{s.location_code} ({_plural(len(s.lines), 'line')})" for s in shipments)
        if RoutingStrategy.FEWEST_SHIPMENTS not in ranking:
            cause = "filled in ranked order"
        elif could_ship_all:
            above = ranking[: ranking.index(RoutingStrategy.FEWEST_SHIPMENTS)]
            cause = " and ".join(_STRATEGY_WORDS[s] for s in above) + " ranked above fewest shipments"
        else:
            cause = f"no single location ships all {_plural(n, 'line')}"
        text = f"{cause}; split across {len(shipments)}: {parts}"
    if unserved:
        text += "; unserved: " + ", ".join(f"{u.sku_code} ({u.missing_quantity})" for u in unserved)
    return text
