"""The five scopes an API key may carry, each the needs of one kind of client."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Scope(StrEnum):
    # read availability and subscribe to it: a public storefront (its key is visible in the browser)
    STOREFRONT = "storefront"
    # reserve, commit, release and extend holds: the checkout service
    CHECKOUT = "checkout"
    # read per-location stock levels and route orders: an order router or OMS
    ROUTER = "router"
    # record inventory events and import snapshots: ERPs, WMSs, POS systems
    INTEGRATION = "integration"
    # catalogue, locations, channels and API keys. Implies no other scope: an operator's key
    # cannot hold stock or forge inventory events unless it is also given those scopes.
    ADMIN = "admin"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


class UnknownScopeError(ValueError):
    pass


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scope names (case-insensitive, blanks ignored) to scopes; raises UnknownScopeError naming the bad ones."""
    cleaned = [v.strip().lower() for v in values if v.strip()]
    known = {s.value for s in Scope}
    unknown = sorted({v for v in cleaned if v not in known})
    if unknown:
        raise UnknownScopeError(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(s.value for s in Scope)}")
    return frozenset(Scope(v) for v in cleaned)


def format_scopes(scopes: Iterable[Scope]) -> str:
    """The stored and printed form: sorted, comma-separated."""
    return ",".join(sorted(s.value for s in scopes))
