"""The change messages the hub carries: one key's new state, and their JSON text on the wire.

    {"kind": "availability", "key": "SKU-1|web", "version": 42, "data": {...}}

or several at once, as the outbox relay sends a batch (one Redis message, serialised once):

    {"changes": [{"kind": ..., "key": ..., "version": ..., "data": ...}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSONObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One key's new state, as published."""

    kind: str
    key: str
    version: int
    data: JSONObject

    def as_json(self) -> JSONObject:
        return {"kind": self.kind, "key": self.key, "version": self.version, "data": self.data}


def encode_message(body: JSONObject) -> str:
    # allow_nan=False: NaN is not JSON, and other consumers would choke on it
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def decode_message(message: object) -> list[Change]:
    """Every change in one message; raises (and the whole message is dropped) if any is malformed."""
    if not isinstance(message, str | bytes):
        raise TypeError(f"expected JSON text, got {type(message).__name__}")
    body = json.loads(message)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if "changes" in body:
        changes = body["changes"]
        if not isinstance(changes, list):
            raise ValueError("changes must be a list")
        return [_change(item) for item in changes]
    return [_change(body)]


def _change(body: object) -> Change:
    if not isinstance(body, dict):
        raise ValueError("a change must be a JSON object")
    kind, key, version, data = body.get("kind"), body.get("key"), body.get("version"), body.get("data")
    if not isinstance(kind, str) or not isinstance(key, str):
        raise ValueError("kind and key must be strings")
    # bool is an int subclass, and True is no version number
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("version must be an integer")
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    return Change(kind, key, version, data)
