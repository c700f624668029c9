"""Checkout reservations, one module per job:

- `reserving`: reserve, all lines or none, under an idempotency key;
- `transitions`: commit, release, extend (each a conditional UPDATE: exactly one of them wins a race);
- `expiry`: holds past their expiry given back, by the sweeper or by a reserve that needs the units;
- `reads`: reservations as the asking actor may see them;
- `records`: the rows a hold writes, shared with routeAndReserve;
- `combining`: concurrent one-line checkouts held together, one transaction per batch over their
  positions (issue 15: a hot SKU beats its row lock; a spread load commits as a group).
"""

from __future__ import annotations

from app.services.reservations.expiry import expire_due, sweep_expired
from app.services.reservations.reads import by_cart, get, load_views
from app.services.reservations.records import by_idempotency_key, open_reservation, record_holds, repeat
from app.services.reservations.reserving import ReserveRequest, reserve
from app.services.reservations.transitions import commit, extend, release, release_cart

__all__ = [
    "ReserveRequest",
    "by_cart",
    "by_idempotency_key",
    "commit",
    "expire_due",
    "extend",
    "get",
    "load_views",
    "open_reservation",
    "record_holds",
    "release",
    "release_cart",
    "repeat",
    "reserve",
    "sweep_expired",
]
