"""`route`: which locations ship an order, the ranked strategies applied step by step.

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

from collections.abc import Sequence

from app.domain.routing.ranking import _dense_ranks, _distance_from, _reason, _Site, _static_keys, effective_ranking
from app.domain.routing.values import (
    Candidate,
    CandidateScore,
    RoutingDecision,
    RoutingRequest,
    RoutingStrategy,
    Shipment,
    ShipmentLine,
    Shortfall,
)


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
