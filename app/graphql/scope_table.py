"""The scope every operation needs, in one table, and the fields a storefront key may not read.

Each root field (query, mutation, subscription) names the scopes that may call it: a key with any of
them may. A root field missing from the table is refused to everyone (fails closed), and
tests/test_security_scopes.py fails, so a new operation cannot ship without a decision.
`admin` implies no other scope (README.md, section Security, says why). The check that applies
these tables is app/graphql/scope_check.py.
"""

from __future__ import annotations

from app.security.scopes import Scope

S = Scope
REQUIRED: dict[str, frozenset[Scope]] = {
    # storefront: what may be sold, live
    "Query.availability": frozenset({S.STOREFRONT}),
    "Query.unknownSkuCodes": frozenset({S.STOREFRONT}),
    "Subscription.availabilityChanged": frozenset({S.STOREFRONT}),
    # admin too: the ops console (/ops) shows and follows every position (read-only)
    "Subscription.stockLevelChanged": frozenset({S.STOREFRONT, S.ROUTER, S.ADMIN}),
    # checkout: holds and their lifecycle
    "Mutation.reserve": frozenset({S.CHECKOUT}),
    "Mutation.commitReservation": frozenset({S.CHECKOUT}),
    "Mutation.releaseReservation": frozenset({S.CHECKOUT}),
    "Mutation.extendReservation": frozenset({S.CHECKOUT}),
    "Query.reservation": frozenset({S.CHECKOUT}),
    "Query.reservations": frozenset({S.CHECKOUT}),
    # router: per-location stock and routing (routeAndReserve holds stock, so checkout may call it too)
    "Query.stockLevels": frozenset({S.ROUTER, S.ADMIN}),
    "Query.routeOrder": frozenset({S.ROUTER}),
    "Query.routingDecisions": frozenset({S.ROUTER, S.ADMIN}),
    "Query.locationRouting": frozenset({S.ROUTER, S.ADMIN}),
    "Query.locations": frozenset({S.ROUTER, S.ADMIN}),
    "Mutation.routeAndReserve": frozenset({S.ROUTER, S.CHECKOUT}),
    # integration: what source systems report
    "Mutation.recordInventoryEvents": frozenset({S.INTEGRATION}),
    "Query.inventoryEvents": frozenset({S.INTEGRATION, S.ADMIN}),
    "Mutation.importSnapshot": frozenset({S.INTEGRATION}),
    # holds taken on other platforms (marketplaces), reported by their integrations
    "Mutation.recordExternalHolds": frozenset({S.INTEGRATION}),
    "Query.orphanedHolds": frozenset({S.INTEGRATION, S.ADMIN}),
    # admin: catalogue, locations, channels, keys
    "Mutation.upsertSkus": frozenset({S.ADMIN}),
    "Mutation.upsertLocations": frozenset({S.ADMIN}),
    "Mutation.upsertChannels": frozenset({S.ADMIN}),
    "Mutation.setRingFences": frozenset({S.ADMIN}),
    "Mutation.setLocationRouting": frozenset({S.ADMIN}),
    "Query.channels": frozenset({S.ADMIN}),
    # operators (the ops console): the catalogue, what is wrong now, a SKU's holds; reads only
    "Query.skus": frozenset({S.ADMIN}),
    "Query.oversoldPositions": frozenset({S.ADMIN}),
    "Query.snapshotCorrections": frozenset({S.INTEGRATION, S.ADMIN}),
    "Query.activeHolds": frozenset({S.CHECKOUT, S.ADMIN}),
    # channels: what each endpoint was told (admin); alerts follow availability (storefront) or ops (admin)
    "Query.channelPublications": frozenset({S.ADMIN}),
    # the delivery log and replay (issue 16): operators
    "Query.channelDeliveries": frozenset({S.ADMIN}),
    "Mutation.replayChannel": frozenset({S.ADMIN}),
    "Query.channelDemand": frozenset({S.ADMIN}),
    "Mutation.setSkuLaunches": frozenset({S.ADMIN}),
    "Subscription.channelAlerts": frozenset({S.STOREFRONT, S.ADMIN}),
    "Query.apiKeys": frozenset({S.ADMIN}),
    "Query.apiKeyEvents": frozenset({S.ADMIN}),
    "Mutation.createApiKey": frozenset({S.ADMIN}),
    "Mutation.revokeApiKey": frozenset({S.ADMIN}),
    # B2B (issue 19): units and accounts are configured by operators; a key reads the accounts it serves
    "Mutation.setSellUnits": frozenset({S.ADMIN}),
    "Mutation.upsertAccounts": frozenset({S.ADMIN}),
    "Mutation.setKeyAccounts": frozenset({S.ADMIN}),
    "Query.accounts": frozenset({S.STOREFRONT, S.CHECKOUT, S.ADMIN}),
    "Query.sellUnits": frozenset({S.STOREFRONT, S.CHECKOUT, S.ADMIN}),
}

# Fields a storefront key may reach (availability, stockLevelChanged) but not read: a browser sees
# what may be sold per SKU, and per location only `available` (for pickup); the quantities behind
# them and the channel's rules are for the router or operators, as `stockLevels` is.
_INTERNALS = frozenset({S.ROUTER, S.ADMIN})
FIELDS: dict[str, frozenset[Scope]] = {
    **{
        f"StockLevel.{name}": _INTERNALS
        for name in ("onHand", "committed", "reserved", "unavailable", "safetyStock", "incoming", "oversold")
    },
    "Availability.oversold": _INTERNALS,
    "Availability.explain": _INTERNALS,
}
# What a browser (a key with only `storefront`) may read of the types its operations return; every
# other field of those types is in FIELDS. tests/test_security_scopes.py walks the schema and fails
# on a field that is in neither, so a new field on them cannot ship without a decision.
STOREFRONT_FIELDS: frozenset[str] = frozenset(
    {
        *(
            f"Availability.{n}"
            for n in ("skuCode", "channelCode", "available", "locations", "version", "accountCode", "unit")
        ),
        *(f"StockLevel.{n}" for n in ("skuCode", "locationCode", "available", "version", "updatedAt", "cursor")),
        *(f"Account.{n}" for n in ("code", "name", "channelCode", "version")),
        "SellUnit.name",
        "SellUnit.size",
        "SkuSellUnits.skuCode",
        "SkuSellUnits.units",
        *(
            f"ChannelAlert.{n}"
            for n in ("channelCode", "skuCode", "kind", "available", "previous", "lowStockThreshold", "version")
        ),
    }
)

# the mutations that hold stock: rate-limited per key (Settings.hold_rate_limit)
# (recordExternalHolds: a marketplace's holds, reported by its integration, take stock like a reserve does)
HOLDS: frozenset[str] = frozenset({"Mutation.reserve", "Mutation.routeAndReserve", "Mutation.recordExternalHolds"})

ROOT_TYPES = ("Query", "Mutation", "Subscription")
