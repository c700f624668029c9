"""Which locations ship an order: routing strategies combined in a ranked order per channel.

A channel ranks strategies the way commerce platforms let merchants rank routing rules; a channel that
ranks none gets `DEFAULT_RANKING` (fewest shipments, then closest, then priority). Exclusions (inactive,
not linked to the channel, at daily order capacity) always apply first and cannot be switched off, and
the location code is always the last tie-break so the same input routes the same way every time.

Everything here is pure: the caller loads the candidates (with what each can sell now), calls `route`,
and turns `RoutingDecision.unserved` into a userError or a backorder as the channel allows.

One module per job: `values` (what goes in and comes out), `ranking` (how locations compare, and
why one won), `cover` (`route` itself: the greedy cover and the other ways of picking shipments).
"""

from __future__ import annotations

from app.domain.routing.cover import route
from app.domain.routing.ranking import effective_ranking, great_circle_km
from app.domain.routing.values import (
    DEFAULT_PRIORITY,
    DEFAULT_RANKING,
    EARTH_RADIUS_KM,
    Candidate,
    CandidateScore,
    Exclusion,
    GeoPoint,
    OrderLine,
    RoutingDecision,
    RoutingRequest,
    RoutingStrategy,
    Shipment,
    ShipmentLine,
    Shortfall,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_RANKING",
    "EARTH_RADIUS_KM",
    "Candidate",
    "CandidateScore",
    "Exclusion",
    "GeoPoint",
    "OrderLine",
    "RoutingDecision",
    "RoutingRequest",
    "RoutingStrategy",
    "Shipment",
    "ShipmentLine",
    "Shortfall",
    "effective_ranking",
    "great_circle_km",
    "route",
]
