"""Channels, one module per job:

- `configuration`: a channel's rules and locations, and ring-fences;
- `figure`: what a channel may sell of each SKU now (the rules are pure, in `app.domain.channel_rules`);
- `holds`: holding under a channel (at most its figure) and giving the holds back.
"""

from __future__ import annotations

from app.services.channels.configuration import (
    CLEARABLE,
    MAX_CHANNELS_PER_CALL,
    ChannelInput,
    ChannelView,
    RingFenceInput,
    list_channels,
    set_ring_fences,
    upsert_channels,
)
from app.services.channels.figure import ChannelAvailabilityView, availability, availability_in, channel_row, rules_of
from app.services.channels.holds import ChannelHold, hold_under_channel, release_channel_holds

__all__ = [
    "CLEARABLE",
    "MAX_CHANNELS_PER_CALL",
    "ChannelAvailabilityView",
    "ChannelHold",
    "ChannelInput",
    "ChannelView",
    "RingFenceInput",
    "availability",
    "availability_in",
    "channel_row",
    "hold_under_channel",
    "list_channels",
    "release_channel_holds",
    "rules_of",
    "set_ring_fences",
    "upsert_channels",
]
