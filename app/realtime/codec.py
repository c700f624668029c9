"""Read models to and from the JSON that travels through the outbox relay and Redis.

Kinds and keys (the Hub indexes mailboxes by both). Every kind ends in "@<tenant id>" (`scoped`), so
a subscriber of one tenant is never offered another tenant's messages, in any process: two brands
may both sell `TEE-M`, and their keys are the same SKU code.
* availability across all active locations: kind "availability", key the SKU code;
* a channel's availability: kind "availability:<channel code>", key the SKU code, so a subscriber to
  one channel never sees another's figures and needs no key parsing;
* a stock level: kind "stock_level", key "<sku code>\\x1f<location code>" (the separator used by
  cursors too; codes cannot start or end with it).

`content` is what a subscriber can see change: two messages for one key with equal content are the
same news, whatever their versions say, and the second is not sent.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from app.db import tenancy
from app.domain.channel_rules import ChannelFigure, RuleStep
from app.domain.quantities import Position
from app.services.channels import ChannelAvailabilityView
from app.services.views import AvailabilityView, StockLevelView

AVAILABILITY = "availability"
STOCK_LEVEL = "stock_level"
_SEP = "\x1f"

Content = tuple[Any, ...]


def scoped(kind: str, tenant_id: int | None = None) -> str:
    """`kind` of one tenant (None: the tenant the running code acts for, app/db/tenancy.py)."""
    tenant = tenancy.current() if tenant_id is None else tenant_id
    if tenant is None:
        raise RuntimeError("no tenant: a change message always belongs to one")
    return f"{kind}@{tenant}"


def unscoped(kind: str) -> str:
    """The kind without its tenant."""
    return kind.rpartition("@")[0] or kind


def availability_kind(channel_code: str | None, tenant_id: int | None = None) -> str:
    return scoped(AVAILABILITY if channel_code is None else f"{AVAILABILITY}:{channel_code}", tenant_id)


def stock_level_kind(tenant_id: int | None = None) -> str:
    return scoped(STOCK_LEVEL, tenant_id)


def is_availability(kind: str) -> bool:
    base = unscoped(kind)
    return base == AVAILABILITY or base.startswith(f"{AVAILABILITY}:")


def is_stock_level(kind: str) -> bool:
    return unscoped(kind) == STOCK_LEVEL


def stock_level_key(sku_code: str, location_code: str) -> str:
    return f"{sku_code}{_SEP}{location_code}"


def split_stock_level_key(key: str) -> tuple[str, str]:
    sku, _, location = key.partition(_SEP)
    return sku, location


def content(kind: str, data: dict[str, Any]) -> Content:
    """The figures a subscriber sees, without version and timestamps (see the module docstring)."""
    if is_availability(kind):
        levels = tuple(_level_content(x) for x in data["locations"])
        return (data["available"], data["oversold"], levels, _figure_content(data.get("figure")))
    return _level_content(data)


def _level_content(d: dict[str, Any]) -> Content:
    return (d["loc"], d["on_hand"], d["committed"], d["reserved"], d["unavailable"], d["safety_stock"], d["incoming"])


def _figure_content(figure: dict[str, Any] | None) -> Content:
    if figure is None:
        return ()
    steps = tuple((s["rule"], s["units_taken"], s["figure_after"]) for s in figure["steps"])
    return (*(figure[k] for k in sorted(figure) if k != "steps"), steps)


def level_to_data(v: StockLevelView) -> dict[str, Any]:
    p = v.position
    return {
        "sku": v.sku_code,
        "loc": v.location_code,
        "on_hand": p.on_hand,
        "committed": p.committed,
        "reserved": p.reserved,
        "unavailable": p.unavailable,
        "safety_stock": p.safety_stock,
        "incoming": p.incoming,
        "version": v.version,
        "updated_at": v.updated_at.isoformat(),
        "active": v.location_active,
    }


def level_from_data(d: dict[str, Any]) -> StockLevelView:
    return StockLevelView(
        sku_code=d["sku"],
        location_code=d["loc"],
        position=Position(
            d["on_hand"], d["committed"], d["reserved"], d["unavailable"], d["safety_stock"], d["incoming"]
        ),
        version=d["version"],
        updated_at=datetime.fromisoformat(d["updated_at"]),
        location_active=d["active"],
    )


def availability_to_data(v: AvailabilityView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sku": v.sku_code,
        "channel": v.channel_code,
        "available": v.available,
        "oversold": v.oversold,
        "version": v.version,
        "locations": [level_to_data(lv) for lv in v.locations],
    }
    figure = getattr(v, "figure", None)
    if isinstance(figure, ChannelFigure):
        data["figure"] = _figure_to_data(figure)
    return data


def availability_from_data(d: dict[str, Any]) -> AvailabilityView:
    levels = tuple(level_from_data(x) for x in d["locations"])
    figure = d.get("figure")
    if figure is not None:
        return ChannelAvailabilityView(
            sku_code=d["sku"],
            channel_code=d["channel"],
            available=d["available"],
            oversold=d["oversold"],
            version=d["version"],
            locations=levels,
            figure=_figure_from_data(figure),
        )
    return AvailabilityView(
        sku_code=d["sku"],
        channel_code=d["channel"],
        available=d["available"],
        oversold=d["oversold"],
        version=d["version"],
        locations=levels,
    )


def _figure_to_data(f: ChannelFigure) -> dict[str, Any]:
    data = asdict(f)
    data["expected_at"] = f.expected_at.isoformat() if f.expected_at is not None else None
    return data


def _figure_from_data(d: dict[str, Any]) -> ChannelFigure:
    expected = d["expected_at"]
    return ChannelFigure(
        available=d["available"],
        on_hand_part=d["on_hand_part"],
        backorderable=d["backorderable"],
        expected_at=datetime.fromisoformat(expected) if expected is not None else None,
        pool=d["pool"],
        base=d["base"],
        mine=d["mine"],
        incoming=d["incoming"],
        steps=tuple(RuleStep(s["rule"], s["units_taken"], s["figure_after"]) for s in d["steps"]),
    )
