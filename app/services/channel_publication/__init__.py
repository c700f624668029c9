"""Publication: push each channel's changed availability to its endpoint, and remember what was acknowledged.

For every channel with an `endpoint_url`, a worker compares each SKU's current channel figure (and its
version) with the last version the endpoint acknowledged, and POSTs only the SKUs that moved, the
latest value of each (a SKU that changed five times since is sent once), in batches. The body is JSON,
signed with HMAC-SHA256 over the exact bytes (`X-Stockwire-Signature: sha256=<hex>`), so the endpoint
can check it came from us. A 2xx records the versions as acknowledged; anything else (or no answer)
is retried with exponential backoff. Every item carries its `version`, which only increases, so an
endpoint that keeps the highest version it has applied can never go back to an older value, however
retries and several processes interleave; our own record of acknowledgements only moves forward too.

Alerts travel in the same message: each item's figure is compared with the one the endpoint last
acknowledged (`app.domain.channel_rules.channel_alerts`), and OUT_OF_STOCK, BACK_IN_STOCK and LOW_STOCK
(below the channel's `low_stock_threshold`) are listed under `alerts`. Because the comparison is with
what was acknowledged, an alert in a failed push is raised again in its retry: delivered at least once.

Body: {"channel": "WEB", "sentAt": "...", "items": [{"sku", "available", "version"}],
       "alerts": [{"sku", "kind", "available", "previous", "version"}]}

`status` shows, per channel and SKU, what the endpoint was last told and what it should show now.

One publisher per channel across the fleet: every process runs a worker, but a channel is pushed only
by the process holding its PostgreSQL advisory lock (`pg_try_advisory_lock(LOCK_NAMESPACE, channel
id)`, session-level, on one connection the worker keeps). When that process dies its connection
closes and PostgreSQL releases the lock; another worker takes it at its next pass (`interval`, 0.5 s)
and first compares every SKU with what was acknowledged, so nothing acknowledged is lost and nothing
unacknowledged is forgotten. A process killed between a POST and recording its answer leaves that one
batch unacknowledged: the new publisher sends it again (at least once; the versions make it harmless).

Every attempt is a row in `channel_deliveries` (`deliveries`): when, how many items, their versions,
DELIVERED or FAILED, latency, error, and which process pushed. `replay` makes the publisher send a
channel again from a version.

One module per job:

- `sync_status`: what each endpoint was last told against what it should show now;
- `push`: the message (items and alerts) and its signature;
- `delivery_log`: the delivery log, and `replay`;
- `worker`: the per-process worker, its election and its record of acknowledgements.
"""

from __future__ import annotations

from app.services.channel_publication.delivery_log import (
    DELIVERED,
    DELIVERY_LOG_DAYS,
    FAILED,
    Delivery,
    deliveries,
    replay,
)
from app.services.channel_publication.push import PUBLISHER_HEADER, SIGNATURE_HEADER, sign, verify
from app.services.channel_publication.sync_status import BATCH, PublicationStatus, status
from app.services.channel_publication.worker import LOCK_NAMESPACE, PublicationWorker

__all__ = [
    "BATCH",
    "DELIVERED",
    "DELIVERY_LOG_DAYS",
    "FAILED",
    "LOCK_NAMESPACE",
    "PUBLISHER_HEADER",
    "SIGNATURE_HEADER",
    "Delivery",
    "PublicationStatus",
    "PublicationWorker",
    "deliveries",
    "replay",
    "sign",
    "status",
    "verify",
]
