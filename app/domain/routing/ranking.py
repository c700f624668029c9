"""How locations compare: distance, the static strategies' keys and ranks, and the words that say why
a location won."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from app.domain.routing.values import (
    DEFAULT_RANKING,
    EARTH_RADIUS_KM,
    Candidate,
    GeoPoint,
    RoutingRequest,
    RoutingStrategy,
    Shipment,
    Shortfall,
)


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
