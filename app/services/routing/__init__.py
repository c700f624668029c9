"""Order routing over live stock, one module per job:

- `inputs`: what the router sees (the request checked, the candidates read from `app.db.routing`);
- `dry_run`: routeOrder, where an order would ship from now (holds nothing, stores nothing);
- `reserving`: routeAndReserve, route and hold in one transaction, routed again when it loses a race;
- `decisions`: what both answer, and the stored routeAndReserve decisions with their inputs;
- `location_settings`: the per-location daily capacity and shipping cost.

The routing rules themselves are pure, in `app.domain.routing`.
"""

from __future__ import annotations

from app.services.routing.decisions import (
    OUTCOME_DRY_RUN,
    OUTCOME_REFUSED,
    OUTCOME_RESERVED,
    DecisionView,
    decisions_for_order,
)
from app.services.routing.dry_run import route_order
from app.services.routing.inputs import RouteOrderRequest
from app.services.routing.location_settings import (
    UNSET,
    LocationRoutingInput,
    LocationRoutingView,
    location_routing_settings,
    set_location_routing,
)
from app.services.routing.reserving import RouteAndReserveResult, route_and_reserve

__all__ = [
    "OUTCOME_DRY_RUN",
    "OUTCOME_REFUSED",
    "OUTCOME_RESERVED",
    "UNSET",
    "DecisionView",
    "LocationRoutingInput",
    "LocationRoutingView",
    "RouteAndReserveResult",
    "RouteOrderRequest",
    "decisions_for_order",
    "location_routing_settings",
    "route_and_reserve",
    "route_order",
    "set_location_routing",
]
