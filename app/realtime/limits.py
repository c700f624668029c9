"""Caps on what websocket clients may hold open in one process: connections and subscriptions per
client address and per API key, subscriptions per connection, codes per subscription.

Counts live in plain dicts whose entries are removed when they drop to zero, so a process that has
served a million addresses holds nothing for them once they left (`Admission.sizes()` says so).
Over a cap, the caller refuses with the `LimitExceeded` it gets: its `code` is the stable
`extensions.code` (or the close reason's prefix) a client can act on, and its message names the
setting.
"""

from __future__ import annotations

from app.realtime.config import RealtimeSettings

TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
TOO_MANY_CODES = "TOO_MANY_CODES"
MESSAGE_TOO_LARGE = "PAYLOAD_TOO_LARGE"


class LimitExceeded(ValueError):
    """A client asked for more than a cap allows; nothing was taken."""

    def __init__(self, code: str, setting: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.setting = setting

    def extensions(self) -> dict[str, object]:
        return {"code": self.code, "limit": self.setting}


class _Counts:
    """How many of something each holder (an address, a key) has open; no entry at zero."""

    __slots__ = ("_held", "limit", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def can_take(self, holder: str) -> bool:
        return self._held.get(holder, 0) < self.limit

    def take(self, holder: str) -> None:
        self._held[holder] = self._held.get(holder, 0) + 1

    def give(self, holder: str) -> None:
        left = self._held.get(holder, 0) - 1
        if left > 0:
            self._held[holder] = left
        else:
            self._held.pop(holder, None)


class Ticket:
    """What one connection or operation holds; `release()` gives it back (once, however often called).

    The counts and holders themselves, not a closure per count: every idle socket holds a few
    tickets, and a lambda with its cells cost about 250 bytes each."""

    __slots__ = ("_held",)

    def __init__(self, held: list[tuple[_Counts, str]] | None = None) -> None:
        self._held = held if held is not None else []

    def release(self) -> None:
        held, self._held = self._held, []
        for counts, holder in held:
            counts.give(holder)

    def __call__(self, _done: object = None) -> None:
        """`release()`, as a done-callback (`task.add_done_callback(ticket)`: no closure to keep)."""
        self.release()

    def joined(self, other: Ticket) -> Ticket:
        """This ticket, now also releasing what `other` holds (`other` is emptied)."""
        self._held, other._held = self._held + other._held, []
        return self


class Admission:
    """The per-process counts behind the caps (one instance per process, shared by every socket)."""

    def __init__(self, settings: RealtimeSettings) -> None:
        self.settings = settings
        self._connections = (
            _Counts("max_connections_per_address", settings.max_connections_per_address),
            _Counts("max_connections_per_key", settings.max_connections_per_key),
            _Counts("max_connections_per_tenant", settings.max_connections_per_tenant),
        )
        self._subscriptions = (
            _Counts("max_subscriptions_per_address", settings.max_subscriptions_per_address),
            _Counts("max_subscriptions_per_key", settings.max_subscriptions_per_key),
            _Counts("max_subscriptions_per_tenant", settings.max_subscriptions_per_tenant),
        )

    def sizes(self) -> dict[str, int]:
        """Holders with something open, per cap (all 0 once every client has left)."""
        return {c.name: len(c) for c in (*self._connections, *self._subscriptions)}

    def connection(self, address: str) -> Ticket:
        """Admit a connection from `address` (at the handshake: its key is not known yet)."""
        return self._admit(self._connections[0], address, TOO_MANY_CONNECTIONS, "connections from this address")

    def connection_of_key(self, key_id: str, tenant_id: int | None = None) -> Ticket:
        """Admit an authenticated connection under key `key_id`, acting for `tenant_id`."""
        ticket = self._admit(self._connections[1], key_id, TOO_MANY_CONNECTIONS, "connections with this API key")
        if tenant_id is not None:
            try:
                ticket.joined(
                    self._admit(
                        self._connections[2], str(tenant_id), TOO_MANY_CONNECTIONS, "connections for this tenant"
                    )
                )
            except LimitExceeded:
                ticket.release()
                raise
        return ticket

    def operation(
        self, address: str, key_id: str | None, open_on_connection: int, tenant_id: int | None = None
    ) -> Ticket:
        """Admit one more operation (subscription, or query/mutation in flight) on a connection."""
        per_connection = self.settings.max_subscriptions_per_connection
        if open_on_connection >= per_connection:
            raise LimitExceeded(
                TOO_MANY_SUBSCRIPTIONS,
                "max_subscriptions_per_connection",
                f"Subscription limit reached: at most {per_connection} operations open on one connection "
                "(max_subscriptions_per_connection)",
            )
        by_address, by_key, by_tenant = self._subscriptions
        ticket = self._admit(by_address, address, TOO_MANY_SUBSCRIPTIONS, "subscriptions from this address")
        held = [
            (by_key, key_id, "subscriptions with this API key"),
            (by_tenant, tenant_id, "subscriptions for this tenant"),
        ]
        for counts, holder, what in held:
            if holder is None:
                continue
            try:
                ticket.joined(self._admit(counts, str(holder), TOO_MANY_SUBSCRIPTIONS, what))
            except LimitExceeded:
                ticket.release()
                raise
        return ticket

    def _admit(self, counts: _Counts, holder: str, code: str, what: str) -> Ticket:
        if not counts.can_take(holder):
            raise LimitExceeded(code, counts.name, f"at most {counts.limit} {what} ({counts.name})")
        counts.take(holder)
        return Ticket([(counts, holder)])


def check_codes(name: str, codes: list[str] | None, limit: int) -> None:
    if codes is not None and len(codes) > limit:
        raise LimitExceeded(
            TOO_MANY_CODES,
            "max_codes_per_subscription",
            f"{name}: at most {limit} codes per subscription, got {len(codes)} (max_codes_per_subscription)",
        )
