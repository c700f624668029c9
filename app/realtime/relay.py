"""The outbox relay: publishes what committed transactions wrote to `outbox`, then deletes it.

Fast path: a commit in this process tells the relay which positions it changed (`poke`, fed by
`Database.write` from `stock.enqueue_changes`), and the relay claims their outbox rows and reads their
current state in one statement, publishes, and only then commits the claim (which deletes the rows).
Hinted positions whose rows it did not claim (another relay held them) are drained _DRAIN_EVERY
later. The outbox stays the guarantee for everything the fast path does not cover: other processes'
rows, commits that named no positions, a crash or a failed publication (the claim rolls back).

Several processes may run it: each claims rows with `FOR UPDATE SKIP LOCKED` (Postgres), so a row
is published by one relay at a time; a failed publish (Redis down) rolls the claim back and the rows
wait for the next attempt, and rows left by a process that died after its commit are found by the
others' polling. What is published is the state read now, not the state at the change, so a late or
repeated publication can only repeat the latest truth, never bring back an old one (and subscribers
drop versions they have already passed).

Nobody to tell: a process alone on its channel (memory://, the embedded default) with no subscriber open
claims the rows without reading the positions or publishing anything (Hub.unheard, _nobody_heard); an
ingested batch of 500 otherwise rebuilt and encoded ~500 messages that reached no one. The hub is asked
after the claim returned, so a subscription opened during it rolls the claim back and gets its message.
With subscribers open, only the messages somebody hears are built (Hub.audience, relay_reads._changes:
a storefront watching a few SKUs while a batch of 500 is ingested); a subscriber opens its mailbox
before reading its snapshot, so one that was not heard when the relay asked reads a state at least as
new as the message it did not get, and the relay forgets what it published last for a key nobody heard.

A change whose figures equal what this relay last published for the key (a version that did not
move, or moved without changing anything a subscriber sees) is not published at all; streams apply
the same rule per subscriber, which also covers what other processes' relays published.

With several relays that skip is only safe if what subscribers last got carries the same figures.
Relay A may publish v1 (20 units), relay B v2 (17), and A then skip v3 (20 again) before B's message
has reached it: subscribers would stay at 17. So every relay also watches the channel (its hub hands
it every message, from any process): it remembers the newest state it knows per key, published or
skipped, and when a message arrives with an older version and other figures than a state it skipped,
it publishes that state again. Every message reaches every hub, so the last word for a key is always
its newest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, tenancy
from app.db.engine import Pair, act_for, generic_plans
from app.realtime import codec, relay_reads
from app.realtime.hub import Change, Hub
from app.services.context import Ctx

log = logging.getLogger("stockwire.realtime")


class _HeardMeanwhile(Exception):
    """A subscription opened while the relay claimed rows unread (Hub.unheard): roll the claim back."""


# After publishing from commit hints without claiming every hinted position's rows, drain this much
# later: under load one claim then covers many changes.
_DRAIN_EVERY = 0.05

# Keys whose last publication this relay remembers (least recently published forgotten first).
_MEMORY = 20_000  # each entry holds the last state (a few KB): forgetting one only costs a repeat


class OutboxRelay:
    def __init__(self, ctx: Ctx, hub: Hub, batch_size: int = 500, memory: int = _MEMORY) -> None:
        self.ctx = ctx
        self.hub = hub
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        # per tenant: positions commits of this process changed, not yet published (see poke)
        self._hinted: dict[int, set[Pair]] = {}
        self._drain_now = False
        self._drain_due: float | None = None  # when rows published from hints get claimed
        self._memory = memory
        # per (kind, key): the newest state this relay knows was published or decided not to publish
        self._published: OrderedDict[tuple[str, str], tuple[int, codec.Content, Change]] = OrderedDict()
        # skipped states that another relay's older message has since overtaken: publish them again
        self._republish: dict[tuple[str, str], Change] = {}
        self.last_error: str | None = None
        self.published_count = 0  # changes handed to the broadcast (for tests and metrics)
        self.skipped_count = 0  # changes not published because nothing a subscriber sees moved
        self.republished_count = 0  # skipped states published after all (see the module docstring)
        self.unheard_count = 0  # positions or outbox rows claimed unread: nobody could hear (_nobody_heard)
        self.unheard_messages = 0  # messages not built: nobody heard their key (_forget_unheard)
        self._levels = relay_reads.LevelCache()  # each level's message, rebuilt only when its row moved
        # tenants with channels, whose figures the hinted path reads through SQLAlchemy; the others' go
        # on the asyncpg connection alone (relay_reads.claim_and_read_driver). Kept for the process's
        # life: a tenant that drops its last channel only keeps the slower path
        self._channel_tenants: set[int] = set()
        hub.observe(self.observe)

    def poke(
        self, changed: frozenset[Pair] = frozenset(), other_rows: bool = True, tenant_id: int | None = None
    ) -> None:
        """Called after a commit in this process that queued changes (Database.on_commit): publish now
        rather than at the next poll, from the positions it names, and claim other rows at once."""
        if changed:
            if tenant_id is None:
                other_rows = True  # a system transaction's positions: found through the outbox
            else:
                self._hinted.setdefault(tenant_id, set()).update(changed)
        if other_rows:
            self._drain_now = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        poll = self.ctx.settings.relay_poll_seconds
        next_poll = loop.time()  # drain at once on start: rows a stopped process left
        while True:
            try:
                hinted, self._hinted = self._hinted, {}
                for tenant_id, pairs in hinted.items():
                    if not await self.publish_hinted(pairs, tenant_id) and self._drain_due is None:
                        self._drain_due = loop.time() + _DRAIN_EVERY
                # The outbox stays the guarantee: drained at once when a commit did not say what it
                # changed, at every poll, and _DRAIN_EVERY after a publication from hints that did not
                # claim every hinted position's rows (most likely published already: then one read
                # and no publication).
                now = loop.time()
                if self._drain_now or now >= next_poll or (self._drain_due is not None and now >= self._drain_due):
                    self._drain_now, self._drain_due = False, None
                    # a short batch means the outbox is drained: a commit since the claim has poked us
                    # again, so stop here rather than pay one more empty transaction per wake-up
                    while await self.drain_once() >= self.batch_size:
                        pass
                    next_poll = loop.time() + poll
                await self._publish_overtaken()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep relaying whatever one batch did; the rows are still there
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox relay: %s; retrying", self.last_error)
                self._drain_now = True
                await asyncio.sleep(0.2)
                continue
            if self._hinted or self._drain_now:
                continue  # poked while working
            deadline = next_poll if self._drain_due is None else min(next_poll, self._drain_due)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races
            # with the event being set, and the relay then never stops
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._wake.wait()
            self._wake.clear()

    async def publish_hinted(self, pairs: set[Pair], tenant_id: int) -> bool:
        """Publish the current state of positions a commit of this process changed, claiming their
        outbox rows in the same read (one statement: relay_reads.claim_and_read) and deleting them
        only once the publication succeeded (the transaction commits after it; a failed publication
        rolls the claim back and the rows wait for a drain). Returns whether every position's rows
        were claimed here: if not (another relay held them, or an earlier read here took them), a
        drain follows, as the outbox stays the guarantee."""

        async def on_driver(db: asyncpg.Connection) -> bool:
            if self.hub.unheard:
                # nobody to tell: claim the rows without reading the positions (no SKUs to read)
                _, claimed, _ = await pg.claim_and_read(db, [], sorted(pairs))
                if not self._nobody_heard(len(claimed)):
                    raise _HeardMeanwhile  # rolled back, the claim with it: read and publish after all
                return claimed >= pairs
            changes, claimed = await relay_reads.claim_and_read_driver(
                db, pairs, self.ctx.clock(), tenant_id, self._levels, self.hub.audience()
            )
            self._forget_unheard()
            # published before the commit (which deletes the claimed rows: only after a publication
            # that succeeded) and the connection's return to the pool
            await self._publish_news(changes)
            return claimed >= pairs

        async def work(conn: AsyncConnection) -> bool:
            changes, claimed = await relay_reads.claim_and_read(
                conn, pairs, self.ctx.clock(), tenant_id, self._levels, self.hub.audience()
            )
            self._forget_unheard()
            await self._publish_news(changes)  # before the commit, as on_driver's
            return claimed >= pairs

        # its one statement takes the positions and SKUs as arrays: planned once per connection
        with tenancy.acting_for(tenant_id), generic_plans():
            if tenant_id not in self._channel_tenants:
                try:
                    # begin_driver, not write_driver: nothing to retry here (a failure leaves the rows
                    # to the drain, as any failed publication), and write_driver's callers stay the
                    # request paths' (tests/test_reserve_driver.py counts them)
                    async with self.ctx.db.begin_driver() as db:
                        return await on_driver(db)
                except relay_reads.ChannelsFound:  # rolled back, the claim with it: read them the other way
                    self._channel_tenants.add(tenant_id)
                except _HeardMeanwhile:
                    pass  # a subscription opened during the claim, which rolled back: the usual path
            return await self.ctx.db.write(work, notify=False)

    async def drain_once(self) -> int:
        """Publish one batch. Returns how many outbox rows it took (0: nothing to do)."""

        async def work(conn: AsyncConnection) -> int:
            # asyncpg directly (app/db/pg.py); skips rows another process's relay has claimed
            rows = await pg.claim_outbox(await pg.driver(conn), self.batch_size)
            if not rows or self._nobody_heard(len(rows)):
                return len(rows)
            by_tenant: dict[int, list[Any]] = {}
            for r in rows:
                by_tenant.setdefault(r["tenant_id"], []).append(r)
            changes: list[Change] = []
            for tenant_id, claimed in sorted(by_tenant.items()):
                await act_for(conn, tenant_id)  # from here on the reads see this tenant's rows only
                changes += await relay_reads.read_changes(
                    conn,
                    {r["sku_id"] for r in claimed},
                    {(r["sku_id"], r["location_id"]) for r in claimed if r["location_id"]},
                    self.ctx.clock(),
                    tenant_id,
                    self._levels,
                    self.hub.audience(),
                )
                self._forget_unheard()
            await self._publish_news(changes)
            return len(rows)

        with tenancy.system():  # the outbox rows of every tenant
            return await self.ctx.db.write(work, notify=False)

    def _nobody_heard(self, claimed: int) -> bool:
        """Whether outbox rows just claimed can go unread and unpublished: nobody can hear them (the
        hub says so, asked after the claim returned). A subscription that opens later reads its
        snapshot after the claim, which took only rows committed before it: the snapshot shows them.
        One that opened during the claim makes this False, and the caller reads and publishes."""
        if not self.hub.unheard:
            return False
        # what subscribers were last sent is gone with them: the next subscriber starts from a
        # snapshot, and a state equal to one published before it must still reach it (_news)
        self._published.clear()
        self.unheard_count += claimed
        return True

    def _forget_unheard(self) -> None:
        """Forget what was last published for the keys the last read found nobody hearing (no message
        built, relay_reads._changes): their state has moved unpublished, and a subscriber arriving now
        starts from a snapshot of it, so the next state must reach it even if it equals the one
        published before (_news would skip it as nothing new)."""
        for slot in self._levels.unheard:
            self._published.pop(slot, None)
        self.unheard_messages += len(self._levels.unheard)

    async def _publish_news(self, changes: list[Change]) -> None:
        """Publish what subscribers have not seen (raises like Hub.publish_many: the caller retries)."""
        # each change's content is worked out once, for the decision and for remembering it
        news = [(c, content) for c in changes if (content := self._news(c)) is not None]
        self.skipped_count += len(changes) - len(news)
        if news:
            await self.hub.publish_many([c for c, _ in news])
            for c, content in news:
                self._store((c.kind, c.key), c, content)
            self.published_count += len(news)

    def observe(self, changes: list[Change]) -> None:
        """Every message on the channel, whoever published it (wired to the hub in __init__)."""
        overtaken = False
        for change in changes:
            if not (codec.is_availability(change.kind) or codec.is_stock_level(change.kind)):
                continue  # not a relay's message
            slot = (change.kind, change.key)
            last = self._published.get(slot)
            if last is not None and change.version == last[0]:
                continue  # the state we know (most often our own message coming back): nothing to do
            try:
                content = codec.content(change.kind, change.data)
            except (KeyError, TypeError, AttributeError):
                log.warning("ignoring a malformed %s message for %r", change.kind, change.key)
                continue
            if last is None or change.version > last[0]:
                self._store(slot, change, content)
            elif change.version < last[0] and content != last[1]:
                # an older state with other figures went out after we skipped a newer one: subscribers
                # would keep those figures, so the newer state must go out after all
                self._republish[slot] = last[2]
                overtaken = True
        if overtaken:
            self._wake.set()  # _publish_overtaken runs on every pass

    async def _publish_overtaken(self) -> None:
        if not self._republish:
            return
        changes = list(self._republish.values())
        await self.hub.publish_many(changes)  # on failure they stay queued: run() retries
        for c in changes:
            if self._republish.get((c.kind, c.key)) is c:
                del self._republish[(c.kind, c.key)]
        self.republished_count += len(changes)

    def _news(self, change: Change) -> codec.Content | None:
        """The change's content if it is to be published, None if not; a skipped change is still
        remembered as the newest known state."""
        slot = (change.kind, change.key)
        last = self._published.get(slot)
        content = self._content(change)
        if last is None or (change.version > last[0] and content != last[1]):
            return content
        if change.version > last[0]:
            self._store(slot, change, content)  # same figures, newer version: what a republish would send
        return None

    def _content(self, change: Change) -> codec.Content:
        # the content relay_reads built with the message (by the id of its data, alive in `change`
        # and replaced on every read), else computed from the data: the same tuple either way
        known = self._levels.contents.get(id(change.data))
        return known if known is not None else codec.content(change.kind, change.data)

    def _store(self, slot: tuple[str, str], change: Change, content: codec.Content) -> None:
        self._published[slot] = (change.version, content, change)
        self._published.move_to_end(slot)
        while len(self._published) > self._memory:
            self._published.popitem(last=False)
