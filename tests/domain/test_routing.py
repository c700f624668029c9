from __future__ import annotations

import math
import random
from decimal import Decimal
from typing import TypedDict

import pytest

from app.domain.routing import (
    DEFAULT_RANKING,
    EARTH_RADIUS_KM,
    Candidate,
    Exclusion,
    GeoPoint,
    OrderLine,
    RoutingDecision,
    RoutingRequest,
    RoutingStrategy,
    Shipment,
    ShipmentLine,
    Shortfall,
    effective_ranking,
    great_circle_km,
    route,
)

PRIORITY = RoutingStrategy.PRIORITY
CLOSEST = RoutingStrategy.CLOSEST
FEWEST = RoutingStrategy.FEWEST_SHIPMENTS
LOWEST_COST = RoutingStrategy.LOWEST_COST

# On the equator one degree of longitude is exactly R·π/180 km, which keeps the worked examples exact.
ORIGIN = GeoPoint(0.0, 0.0)
ONE_DEGREE_KM = EARTH_RADIUS_KM * math.pi / 180


class Coordinates(TypedDict):
    latitude: float
    longitude: float


def at(degrees_east: float) -> Coordinates:
    """A point on the equator, where distances between the worked examples are easy to reason about."""
    return {"latitude": 0.0, "longitude": degrees_east}


def order(
    *lines: tuple[str, int],
    destination: GeoPoint | None = ORIGIN,
    ranking: tuple[RoutingStrategy, ...] | None = None,
    allow_split: bool = True,
) -> RoutingRequest:
    return RoutingRequest(tuple(OrderLine(sku, qty) for sku, qty in lines), destination, ranking, allow_split)


def shipped(decision: RoutingDecision) -> dict[str, dict[str, int]]:
    return {s.location_code: dict(s.lines) for s in decision.shipments}


# --- distance and inputs ---------------------------------------------------------------------------


def test_great_circle_one_degree_on_the_equator() -> None:
    assert great_circle_km(ORIGIN, GeoPoint(0.0, 1.0)) == pytest.approx(ONE_DEGREE_KM, rel=1e-12)
    assert great_circle_km(ORIGIN, ORIGIN) == 0.0


def test_great_circle_known_cities_and_antipodes() -> None:
    london, paris = GeoPoint(51.5074, -0.1278), GeoPoint(48.8566, 2.3522)
    assert great_circle_km(london, paris) == pytest.approx(343.5, abs=1.0)
    assert great_circle_km(paris, london) == great_circle_km(london, paris)
    # Rounding must not push asin past its domain at the far side of the Earth.
    assert great_circle_km(ORIGIN, GeoPoint(0.0, 180.0)) == pytest.approx(math.pi * EARTH_RADIUS_KM)


@pytest.mark.parametrize(("lat", "lon"), [(90.5, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0)])
def test_geopoint_out_of_range_is_refused(lat: float, lon: float) -> None:
    with pytest.raises(ValueError):
        GeoPoint(lat, lon)


def test_order_line_needs_a_positive_quantity() -> None:
    with pytest.raises(ValueError):
        OrderLine("SKU-1", 0)


def test_default_ranking_is_the_contract_one() -> None:
    assert DEFAULT_RANKING == (FEWEST, CLOSEST, PRIORITY)
    assert effective_ranking(None) == DEFAULT_RANKING
    assert effective_ranking((PRIORITY, CLOSEST, PRIORITY)) == (PRIORITY, CLOSEST)
    assert effective_ranking(()) == ()


# --- single strategies -----------------------------------------------------------------------------


def test_priority_lower_number_first() -> None:
    candidates = [
        Candidate("A", priority=50, available={"S": 5}),
        Candidate("B", priority=10, available={"S": 5}),
    ]
    decision = route(order(("S", 2), ranking=(PRIORITY,)), candidates)
    assert decision.shipments == (Shipment("B", (ShipmentLine("S", 2),)),)
    assert decision.reason == "B ships all 1 line; highest priority (10) of 2 that could"


def test_closest_to_destination_wins() -> None:
    candidates = [
        Candidate("FAR", **at(3.0), available={"S": 5}),
        Candidate("NEAR", **at(-1.0), available={"S": 5}),
        Candidate("MID", **at(2.0), available={"S": 5}),
    ]
    decision = route(order(("S", 1), ranking=(CLOSEST,)), candidates)
    assert [s.location_code for s in decision.shipments] == ["NEAR"]
    assert decision.reason == "NEAR ships all 1 line; closest (111 km) of 3 that could"


def test_lowest_cost_wins_and_missing_cost_ranks_last() -> None:
    candidates = [
        Candidate("NOCOST", priority=1, available={"S": 5}),
        Candidate("DEAR", shipping_cost=Decimal("7.90"), available={"S": 5}),
        Candidate("CHEAP", shipping_cost=Decimal("4.50"), available={"S": 5}),
    ]
    decision = route(order(("S", 1), ranking=(LOWEST_COST, PRIORITY)), candidates)
    assert [s.location_code for s in decision.shipments] == ["CHEAP"]
    assert "lowest cost (4.50)" in decision.reason
    assert [c.location_code for c in decision.candidates] == ["CHEAP", "DEAR", "NOCOST"]


def test_location_code_is_the_last_tie_break() -> None:
    candidates = [Candidate("B", available={"S": 1}), Candidate("A", available={"S": 1})]
    decision = route(order(("S", 1), ranking=(PRIORITY,)), candidates)
    assert [s.location_code for s in decision.shipments] == ["A"]
    assert decision.reason == "A ships all 1 line; first by location code of 2 that could"


def test_empty_ranking_routes_by_code_only() -> None:
    candidates = [Candidate("Z", priority=1, available={"S": 1}), Candidate("M", available={"S": 1})]
    decision = route(order(("S", 1), ranking=()), candidates)
    assert [s.location_code for s in decision.shipments] == ["M"]


# --- ties through the default ranking --------------------------------------------------------------


def test_equal_distance_falls_to_priority_then_code() -> None:
    # (0, 1) and (0, -1) are exactly as far from the origin.
    candidates = [
        Candidate("WEST", priority=20, **at(-1.0), available={"S": 3}),
        Candidate("EAST", priority=10, **at(1.0), available={"S": 3}),
        Candidate("EAST2", priority=10, **at(1.0), available={"S": 3}),
    ]
    decision = route(order(("S", 1)), candidates)
    assert [s.location_code for s in decision.shipments] == ["EAST"]
    assert decision.reason == "EAST ships all 1 line; first by location code of 3 that could"
    assert [c.rank for c in decision.candidates] == [1, 2, 3]
    assert [c.location_code for c in decision.candidates] == ["EAST", "EAST2", "WEST"]

    without_east = route(order(("S", 1)), candidates[:1] + candidates[2:])
    assert without_east.reason == "EAST2 ships all 1 line; highest priority (10) of 2 that could"


# --- exclusions ------------------------------------------------------------------------------------


def test_exclusions_apply_before_any_strategy() -> None:
    candidates = [
        Candidate("OFF", active=False, priority=1, **at(0.1), available={"S": 9}),
        Candidate("OTHER-CHANNEL", linked=False, priority=1, **at(0.1), available={"S": 9}),
        Candidate("FULL", daily_capacity=40, orders_today=40, **at(0.1), available={"S": 9}),
        Candidate("OK", daily_capacity=40, orders_today=39, **at(5.0), available={"S": 9}),
    ]
    decision = route(order(("S", 2)), candidates)
    assert shipped(decision) == {"OK": {"S": 2}}
    reasons = {c.location_code: (c.excluded_reason, c.rank) for c in decision.candidates}
    assert reasons == {
        "OK": (None, 1),
        "FULL": (Exclusion.AT_CAPACITY, None),
        "OFF": (Exclusion.INACTIVE, None),
        "OTHER-CHANNEL": (Exclusion.NOT_LINKED, None),
    }


def test_zero_capacity_is_always_at_capacity_and_inactive_is_reported_first() -> None:
    assert Candidate("X", daily_capacity=0).exclusion is Exclusion.AT_CAPACITY
    assert Candidate("X", daily_capacity=None, orders_today=10_000).exclusion is None
    assert Candidate("X", active=False, linked=False, daily_capacity=0).exclusion is Exclusion.INACTIVE
    assert Candidate("X", linked=False, daily_capacity=0).exclusion is Exclusion.NOT_LINKED


def test_everything_excluded_leaves_the_order_unserved() -> None:
    decision = route(order(("S", 1)), [Candidate("OFF", active=False, available={"S": 5})])
    assert decision.shipments == ()
    assert decision.unserved == (Shortfall("S", 1),)
    assert not decision.fully_served
    assert decision.reason == "no eligible location holds any of the order (1 excluded); unserved: S (1)"


# --- fewest shipments ------------------------------------------------------------------------------


def test_one_location_that_ships_everything_beats_a_closer_split() -> None:
    candidates = [
        Candidate("NEAR-A", **at(0.5), available={"A": 5}),
        Candidate("NEAR-B", **at(-0.5), available={"B": 5}),
        Candidate("FAR", **at(3.0), available={"A": 5, "B": 5}),
    ]
    decision = route(order(("A", 1), ("B", 1)), candidates)
    assert shipped(decision) == {"FAR": {"A": 1, "B": 1}}
    assert decision.reason == "FAR ships all 2 lines; the only location that could"


def test_among_locations_that_ship_everything_the_closest_wins() -> None:
    candidates = [
        Candidate("WH-2", **at(2.0), available={"A": 5, "B": 5}),
        Candidate("WH-1", **at(1.0), available={"A": 5, "B": 5}),
        Candidate("WH-0", **at(0.0), available={"A": 5}),
    ]
    decision = route(order(("A", 2), ("B", 2)), candidates)
    assert shipped(decision) == {"WH-1": {"A": 2, "B": 2}}
    assert decision.reason == "WH-1 ships all 2 lines; closest (111 km) of 2 that could"


def test_greedy_cover_takes_the_location_with_most_whole_lines_first() -> None:
    candidates = [
        Candidate("TWO", **at(4.0), available={"A": 5, "B": 5}),
        Candidate("ONE-A", **at(0.1), available={"A": 5}),
        Candidate("ONE-C", **at(3.0), available={"C": 5}),
        Candidate("ONE-C-NEAR", **at(1.0), available={"C": 5}),
    ]
    decision = route(order(("A", 1), ("B", 1), ("C", 1)), candidates)
    assert shipped(decision) == {"TWO": {"A": 1, "B": 1}, "ONE-C-NEAR": {"C": 1}}
    # The main parcel first, in the order the cover picked them.
    assert [s.location_code for s in decision.shipments] == ["TWO", "ONE-C-NEAR"]
    assert decision.reason == "no single location ships all 3 lines; split across 2: TWO (2 lines), ONE-C-NEAR (1 line)"


def test_greedy_ties_on_lines_go_to_the_next_strategy() -> None:
    candidates = [
        Candidate("AB-FAR", **at(3.0), available={"A": 1, "B": 1}),
        Candidate("BC-NEAR", **at(1.0), available={"B": 1, "C": 1}),
        Candidate("A-ONLY", **at(2.0), available={"A": 1}),
    ]
    decision = route(order(("A", 1), ("B", 1), ("C", 1)), candidates)
    # Both pairs cover two lines; the nearer goes first, then A from the nearer of what is left.
    assert [s.location_code for s in decision.shipments] == ["BC-NEAR", "A-ONLY"]


def test_a_line_someone_ships_whole_is_not_split() -> None:
    candidates = [
        Candidate("MAIN", **at(0.0), available={"A": 5, "B": 5, "C": 3}),
        Candidate("C-STORE", **at(9.0), available={"C": 5}),
    ]
    decision = route(order(("A", 1), ("B", 1), ("C", 5)), candidates)
    assert shipped(decision) == {"MAIN": {"A": 1, "B": 1}, "C-STORE": {"C": 5}}


def test_a_line_no_one_ships_whole_is_split_most_units_first() -> None:
    candidates = [
        Candidate("SIX", **at(5.0), available={"S": 6}),
        Candidate("THREE", **at(0.0), available={"S": 3}),
        Candidate("FOUR", **at(4.0), available={"S": 4}),
    ]
    decision = route(order(("S", 10)), candidates)
    # 6 first (most units), then the remainder of 4 fits whole at FOUR; THREE is not needed.
    assert shipped(decision) == {"SIX": {"S": 6}, "FOUR": {"S": 4}}
    assert decision.fully_served


def test_partial_location_also_ships_its_whole_lines() -> None:
    candidates = [
        Candidate("BIG", **at(1.0), available={"A": 2, "B": 7}),
        Candidate("SMALL", **at(0.0), available={"A": 3}),
    ]
    decision = route(order(("A", 4), ("B", 7)), candidates)
    assert shipped(decision) == {"BIG": {"A": 2, "B": 7}, "SMALL": {"A": 2}}


def test_unserved_remainder_is_reported() -> None:
    candidates = [Candidate("X", available={"A": 4, "B": 9}), Candidate("Y", available={"A": 3})]
    decision = route(order(("A", 10), ("B", 2), ("GHOST", 1)), candidates)
    assert shipped(decision) == {"X": {"A": 4, "B": 2}, "Y": {"A": 3}}
    assert decision.unserved == (Shortfall("A", 3), Shortfall("GHOST", 1))
    assert decision.reason.endswith("; unserved: A (3), GHOST (1)")


def test_negative_available_gives_nothing_and_takes_nothing() -> None:
    candidates = [Candidate("UNDER", available={"S": -4}), Candidate("OK", available={"S": 2})]
    decision = route(order(("S", 3)), candidates)
    assert shipped(decision) == {"OK": {"S": 2}}
    assert decision.unserved == (Shortfall("S", 1),)


def test_repeated_sku_lines_are_summed_and_never_exceed_available() -> None:
    candidates = [
        Candidate("SMALL", **at(0.0), available={"S": 5}),
        Candidate("BIG", **at(2.0), available={"S": 10}),
    ]
    decision = route(order(("S", 3), ("S", 4)), candidates)
    assert decision.shipments == (Shipment("BIG", (ShipmentLine("S", 7),)),)

    alone = route(order(("S", 3), ("S", 4)), candidates[:1])
    assert shipped(alone) == {"SMALL": {"S": 5}}
    assert alone.unserved == (Shortfall("S", 2),)


# --- missing coordinates and destination -----------------------------------------------------------


def test_location_without_coordinates_ranks_after_those_with() -> None:
    candidates = [
        Candidate("NOWHERE", priority=1, available={"S": 1}),
        Candidate("FAR", priority=100, **at(90.0), available={"S": 1}),
    ]
    decision = route(order(("S", 1)), candidates)
    assert [s.location_code for s in decision.shipments] == ["FAR"]
    nowhere = next(c for c in decision.candidates if c.location_code == "NOWHERE")
    assert nowhere.distance_km is None and nowhere.rank == 2


def test_without_destination_closest_is_a_no_op() -> None:
    candidates = [
        Candidate("NEAR", priority=50, **at(0.0), available={"S": 1}),
        Candidate("FIRST", priority=5, **at(90.0), available={"S": 1}),
    ]
    decision = route(order(("S", 1), destination=None), candidates)
    assert [s.location_code for s in decision.shipments] == ["FIRST"]
    assert decision.reason == "FIRST ships all 1 line; highest priority (5) of 2 that could"
    assert all(c.distance_km is None for c in decision.candidates)


# --- ranked combinations ---------------------------------------------------------------------------


def test_without_fewest_shipments_each_line_fills_from_the_best_location() -> None:
    candidates = [
        Candidate("P1", priority=1, available={"A": 3}),
        Candidate("P2", priority=2, available={"A": 9, "B": 9}),
    ]
    decision = route(order(("A", 5), ("B", 1), ranking=(PRIORITY,)), candidates)
    # P2 could ship everything, but priority alone fills A from P1 first.
    assert shipped(decision) == {"P1": {"A": 3}, "P2": {"A": 2, "B": 1}}
    assert decision.reason == "filled in ranked order; split across 2: P1 (1 line), P2 (2 lines)"


def test_a_strategy_ranked_above_fewest_shipments_wins_over_it() -> None:
    candidates = [
        Candidate("NEAR", **at(0.0), available={"A": 5}),
        Candidate("ALL", **at(5.0), available={"A": 5, "B": 5}),
    ]
    decision = route(order(("A", 1), ("B", 1), ranking=(CLOSEST, FEWEST)), candidates)
    assert shipped(decision) == {"NEAR": {"A": 1}, "ALL": {"B": 1}}
    assert decision.reason.startswith("closest ranked above fewest shipments; split across 2")

    default = route(order(("A", 1), ("B", 1)), candidates)
    assert shipped(default) == {"ALL": {"A": 1, "B": 1}}


def test_fewest_then_lowest_cost_then_closest() -> None:
    candidates = [
        Candidate("NEAR-DEAR", **at(0.0), shipping_cost=Decimal("9.00"), available={"A": 1, "B": 1}),
        Candidate("FAR-CHEAP", **at(8.0), shipping_cost=Decimal("3.25"), available={"A": 1, "B": 1}),
        Candidate("CHEAPEST-PART", **at(1.0), shipping_cost=Decimal("1.00"), available={"A": 1}),
    ]
    decision = route(order(("A", 1), ("B", 1), ranking=(FEWEST, LOWEST_COST, CLOSEST)), candidates)
    assert shipped(decision) == {"FAR-CHEAP": {"A": 1, "B": 1}}
    assert decision.reason == "FAR-CHEAP ships all 2 lines; lowest cost (3.25) of 2 that could"


def test_priority_ranked_first_overrides_distance_and_fewest() -> None:
    candidates = [
        Candidate("STORE", priority=1, **at(9.0), available={"A": 1}),
        Candidate("DC", priority=5, **at(0.0), available={"A": 1, "B": 1}),
    ]
    decision = route(order(("A", 1), ("B", 1), ranking=(PRIORITY, FEWEST, CLOSEST)), candidates)
    assert [s.location_code for s in decision.shipments] == ["STORE", "DC"]


# --- no splitting ----------------------------------------------------------------------------------


def test_no_split_ships_from_one_location_and_leaves_the_rest_unserved() -> None:
    candidates = [
        Candidate("NEAR", **at(0.0), available={"A": 5}),
        Candidate("MOST", **at(3.0), available={"A": 5, "B": 1}),
    ]
    decision = route(order(("A", 2), ("B", 3), allow_split=False), candidates)
    assert shipped(decision) == {"MOST": {"A": 2, "B": 1}}
    assert decision.unserved == (Shortfall("B", 2),)
    assert decision.reason == "splitting is off; MOST ships 2 of 2 lines; unserved: B (2)"


def test_no_split_prefers_a_complete_location_ranked_by_the_rest() -> None:
    candidates = [
        Candidate("PART", **at(0.0), available={"A": 5}),
        Candidate("ALL-FAR", **at(4.0), available={"A": 5, "B": 5}),
        Candidate("ALL-NEAR", **at(2.0), available={"A": 5, "B": 5}),
    ]
    decision = route(order(("A", 1), ("B", 1), ranking=(CLOSEST,), allow_split=False), candidates)
    assert shipped(decision) == {"ALL-NEAR": {"A": 1, "B": 1}}


# --- scores ----------------------------------------------------------------------------------------


def test_candidate_scores_show_what_each_location_could_do() -> None:
    candidates = [
        Candidate("A", priority=7, **at(1.0), shipping_cost=Decimal("2.5"), available={"X": 3, "Y": 1}),
        Candidate("B", **at(2.0), available={"X": 1}),
        Candidate("C", active=False, available={"X": 9}),
    ]
    decision = route(order(("X", 2), ("Y", 1)), candidates)
    a, b, c = decision.candidates
    assert (a.location_code, a.rank, a.covers_lines, a.covers_units) == ("A", 1, 2, 3)
    assert a.distance_km == pytest.approx(ONE_DEGREE_KM)
    assert (a.priority, a.shipping_cost) == (7, Decimal("2.5"))
    assert (b.location_code, b.rank, b.covers_lines, b.covers_units) == ("B", 2, 0, 1)
    assert (c.location_code, c.rank, c.excluded_reason) == ("C", None, Exclusion.INACTIVE)


def test_empty_order_routes_to_nothing() -> None:
    decision = route(RoutingRequest(()), [Candidate("A", available={"S": 1})])
    assert decision.shipments == () and decision.unserved == ()
    assert decision.reason == "nothing to route"


# --- size and invariants ---------------------------------------------------------------------------


def test_twenty_lines_over_two_hundred_locations_needing_a_cover() -> None:
    skus = [f"SKU-{i:02d}" for i in range(20)]
    candidates = []
    # Ten far locations each hold one pair of SKUs in full: the cover needs exactly these ten.
    for k in range(10):
        pair = {skus[2 * k]: 10, skus[2 * k + 1]: 10}
        candidates.append(Candidate(f"PAIR-{k}", **at(50.0 + k), available=pair))
    # 190 nearer locations hold one SKU each in full and a few units of others.
    for i in range(190):
        stock = {skus[i % 20]: 10, skus[(i + 7) % 20]: 1, skus[(i + 13) % 20]: 2}
        candidates.append(Candidate(f"LOC-{i:03d}", **at(i / 10), available=stock))
    request = order(*[(s, 5) for s in skus])

    decision = route(request, candidates)

    assert decision.fully_served
    assert sorted(s.location_code for s in decision.shipments) == [f"PAIR-{k}" for k in range(10)]
    assert all(len(s.lines) == 2 for s in decision.shipments)
    assert len(decision.candidates) == 200


def test_one_deep_warehouse_among_two_hundred_ships_everything() -> None:
    skus = [f"SKU-{i:02d}" for i in range(20)]
    candidates = [
        Candidate(f"STORE-{i:03d}", **at(i / 100), available={s: 3 for s in skus[: 19 - i % 5]}) for i in range(199)
    ]
    candidates.append(Candidate("DC", **at(60.0), available={s: 100 for s in skus}))
    decision = route(order(*[(s, 2) for s in skus]), candidates)
    assert shipped(decision) == {"DC": {s: 2 for s in skus}}


@pytest.mark.parametrize(
    "ranking",
    [None, (PRIORITY,), (CLOSEST, FEWEST), (LOWEST_COST, PRIORITY), (PRIORITY, FEWEST, LOWEST_COST), ()],
)
@pytest.mark.parametrize("allow_split", [True, False])
def test_random_orders_never_overdraw_and_account_for_every_unit(
    ranking: tuple[RoutingStrategy, ...] | None, allow_split: bool
) -> None:
    rng = random.Random(20240611)
    skus = [f"S{i}" for i in range(8)]
    for _ in range(150):
        candidates = [
            Candidate(
                f"L{i:02d}",
                active=rng.random() > 0.1,
                linked=rng.random() > 0.1,
                priority=rng.randint(1, 5),
                latitude=rng.uniform(-60, 60) if rng.random() > 0.2 else None,
                longitude=rng.uniform(-170, 170),
                shipping_cost=Decimal(rng.randint(1, 9)) if rng.random() > 0.3 else None,
                daily_capacity=rng.choice([None, 5]),
                orders_today=rng.randint(0, 6),
                available={s: rng.randint(-2, 6) for s in rng.sample(skus, rng.randint(0, 5))},
            )
            for i in range(rng.randint(0, 12))
        ]
        lines = [(s, rng.randint(1, 8)) for s in rng.sample(skus, rng.randint(1, 6))]
        decision = route(order(*lines, ranking=ranking, allow_split=allow_split), candidates)

        by_code = {c.location_code: c for c in candidates}
        got: dict[str, int] = {}
        for shipment in decision.shipments:
            assert by_code[shipment.location_code].exclusion is None
            for sku, qty in shipment.lines:
                assert 0 < qty <= by_code[shipment.location_code].available[sku]
                got[sku] = got.get(sku, 0) + qty
        missing = dict(decision.unserved)
        for sku, qty in lines:
            assert got.get(sku, 0) + missing.get(sku, 0) == qty
        if not allow_split:
            assert len(decision.shipments) <= 1
        if ranking is None and any(
            c.exclusion is None and all(c.available.get(s, 0) >= q for s, q in lines) for c in candidates
        ):
            assert len(decision.shipments) == 1 and decision.fully_served
