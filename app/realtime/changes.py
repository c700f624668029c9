"""The change messages the hub carries: one key's new state, and their JSON text on the wire.

    {"kind": "availability", "key": "SKU-1|web", "version": 42, "data": {...}}

or several at once, as the outbox relay sends a batch (one Redis message, serialised once):

    {"changes": [{"kind": ..., "key": ..., "version": ..., "data": ...}, ...]}
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
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


class EncodedData(dict[str, Any]):
    """A change's data that knows its own JSON text (`dumps` of it, made by whoever built the data from
    parts already encoded): `encode_changes` splices `text` in instead of encoding the dict again.

    Why: an availability message carries every location's level (~120 for a routed SKU), and the outbox
    relay keeps each level's text with its message (app/realtime/relay_reads.py), so a message whose
    levels mostly did not move is joined from cached texts, not re-encoded level by level. The dict
    stays an ordinary dict for everything else; it must not be changed after `text` is set (the relay
    builds a new one per read and never changes one)."""

    __slots__ = ("text",)
    text: str  # set right after the dict is made: `data = EncodedData(plain); data.text = ...`
    # (no __init__ of its own: a Python-level __init__ calling dict's cost twice dict's own, for every
    # level and availability the relay rebuilds)


# json.dumps with any option builds a new JSONEncoder per call; the relay encodes every level it
# rebuilds and every message it sends, so the encoder is made once (3.4-3.5 -> 2.6 us for a level's dict, timeit here)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_encode = _ENCODER.encode


def dumps(value: Any) -> str:
    """JSON text as every message is encoded (compact; allow_nan=False: NaN is not JSON, and other
    consumers would choke on it)."""
    return _encode(value)


# Texts this process encoded with spliced data, and the changes they carry: when such a text comes back
# (every hub hears its own process's messages, through Redis or the memory backend) it is not parsed
# again (a routed order's ~100 KB of levels, parsed by the publishing process's own hub, was as much
# work as building them). Bounded: a text that never comes back (the publication failed) is dropped.
_OWN: OrderedDict[str, list[Change]] = OrderedDict()
_OWN_MAX = 16


@functools.lru_cache(maxsize=65_536)
def json_string(text: str) -> str:
    """`dumps` of a string that repeats from one message to the next (a change's kind and key, a SKU's
    or location's code), encoded once."""
    return dumps(text)


def encode_changes(changes: Sequence[Change]) -> str:
    """The message of `changes`, exactly `dumps` of one change's `as_json()`, or of
    `{"changes": [...]}` for several, with each change's EncodedData spliced in rather than encoded
    again, and made from the changes themselves (no `as_json` dict per change). A text with spliced
    data is remembered with its changes: this process's hub decodes it back to these very ones."""
    parts: list[str] = []
    spliced = False
    for c in changes:
        data, version = c.data, c.version
        # a plain int version encodes as str() does, so the text is exactly what dumps would make
        if isinstance(data, EncodedData) and type(version) is int:
            parts.append(
                f'{{"kind":{json_string(c.kind)},"key":{json_string(c.key)},"version":{version},"data":{data.text}}}'
            )
            spliced = True
        else:
            parts.append(dumps(c.as_json()))
    text = parts[0] if len(parts) == 1 else '{"changes":[' + ",".join(parts) + "]}"
    if spliced:
        _OWN[text] = list(changes)  # Change is frozen, and an EncodedData is never changed once made
        while len(_OWN) > _OWN_MAX:
            _OWN.popitem(last=False)
    return text


def decode_message(message: object) -> list[Change]:
    """Every change in one message; raises (and the whole message is dropped) if any is malformed."""
    if not isinstance(message, str | bytes):
        raise TypeError(f"expected JSON text, got {type(message).__name__}")
    if isinstance(message, str):
        own = _OWN.pop(message, None)
        if own is not None:
            return list(own)  # what parsing it would give (tests/test_relay_reads.py)
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
