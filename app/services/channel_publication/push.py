"""The message pushed to a channel's endpoint, and its signature.

Body: {"channel": "WEB", "sentAt": "...", "items": [{"sku", "available", "version"}],
       "alerts": [{"sku", "kind", "available", "previous", "version"}]}
signed with HMAC-SHA256 over the exact bytes (`X-Stockwire-Signature: sha256=<hex>`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from app.domain.channel_rules import channel_alerts
from app.services.channel_publication.sync_status import PublicationStatus

SIGNATURE_HEADER = "X-Stockwire-Signature"
PUBLISHER_HEADER = "X-Stockwire-Publisher"  # which process pushed (host:pid), as in the delivery log


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


def body(channel: Any, now: datetime, batch: list[PublicationStatus]) -> bytes:
    """The batch's current figures, and the alerts each raises against what the endpoint acknowledged."""
    items = [{"sku": s.sku_code, "available": s.current_available, "version": s.current_version} for s in batch]
    alerts = [
        {
            "sku": s.sku_code,
            "kind": kind,
            "available": s.current_available,
            "previous": s.acked_available,
            "version": s.current_version,
        }
        for s in batch
        for kind in channel_alerts(s.acked_available, s.current_available, channel.low_stock_threshold)
    ]
    return json.dumps(
        {"channel": channel.code, "sentAt": now.isoformat(), "items": items, "alerts": alerts},
        separators=(",", ":"),
    ).encode()


def headers(channel: Any, publisher: str, content: bytes) -> dict[str, str]:
    out = {"Content-Type": "application/json", PUBLISHER_HEADER: publisher}
    if channel.endpoint_secret:
        out[SIGNATURE_HEADER] = sign(channel.endpoint_secret, content)
    return out
