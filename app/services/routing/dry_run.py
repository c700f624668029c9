"""routeOrder: where an order would ship from now. Holds nothing, stores nothing."""

from __future__ import annotations

from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.routing import RoutingDecision, route
from app.services import channels as channels_service
from app.services.context import Ctx
from app.services.routing import inputs
from app.services.routing.decisions import OUTCOME_DRY_RUN, DecisionView, decision_view
from app.services.routing.inputs import RouteOrderRequest


async def route_order(ctx: Ctx, req: RouteOrderRequest) -> DecisionView:
    """Where the order would ship from now. Holds nothing, stores nothing; Refused on bad input."""
    errors, destination = inputs.validate(req, ctx.settings.max_units_per_reservation)
    if errors:
        raise Refused(errors)
    now = ctx.clock()
    # in a transaction (no AUTOCOMMIT): the tenant it reads for is set per transaction (app/db/tenancy.py)
    async with ctx.db.read() as conn:
        setting = await inputs.load(conn, req, now)
        routing = inputs.routing_request(req, setting, destination)
        decision = route(routing, setting.candidates)
        if req.channel_code is None:
            return decision_view(req, routing, decision, OUTCOME_DRY_RUN, inputs.unserved_errors(req, decision), now)
        # under a channel, answer as routeAndReserve would: its figure bounds each SKU, and what no
        # location can serve is backordered when the channel's allowance covers it
        figures = {
            v.sku_code: v.available
            for v in await channels_service.availability_in(
                conn, req.channel_code, [ln.sku_code for ln in req.lines], now
            )
        }
    errors, reason = _channel_dry_run(req, decision, figures, backorders=setting.channel_backorder_limit is not None)
    return decision_view(req, routing, decision, OUTCOME_DRY_RUN, errors, now, reason)


def _channel_dry_run(
    req: RouteOrderRequest, decision: RoutingDecision, figures: dict[str, int], backorders: bool
) -> tuple[list[UserError], str]:
    missing = {u.sku_code: u.missing_quantity for u in decision.unserved}
    errors: list[UserError] = []
    backordered: list[str] = []
    for i, ln in enumerate(req.lines):
        may_sell = figures.get(ln.sku_code, 0)
        if ln.quantity > may_sell:
            errors.append(
                UserError(
                    ErrorCode.INSUFFICIENT_STOCK,
                    f"{ln.sku_code}: {ln.quantity} requested, channel {req.channel_code} may sell {may_sell}",
                    ("lines", str(i), "quantity"),
                )
            )
        elif ln.sku_code in missing and backorders:
            backordered.append(f"{ln.sku_code} ({missing[ln.sku_code]})")
        elif ln.sku_code in missing:
            errors += [e for e in inputs.unserved_errors(req, decision) if e.field == ("lines", str(i), "quantity")]
    reason = decision.reason
    if backordered and not errors:
        reason += "; would be backordered under the channel's allowance: " + ", ".join(backordered)
    return errors, reason
