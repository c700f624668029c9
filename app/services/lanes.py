"""Lanes: concurrent requests that would queue on the same row locks, served together in one transaction.

Two paths use it: one-line checkouts (app/services/reservations/combining.py) and recorded batches of
events (app/services/events_combining.py). Each keeps its own rules of what may share a transaction
(`take`) and how a shared one runs (`run`); the lane only queues, in arrival order:

- a request that finds its lane idle runs at once, alone, the ordinary way (`alone`): an idle service
  pays nothing extra, and no request waits for a batch to form;
- the requests that arrive while one is in flight queue; when it ends, the queue becomes the next
  batch (`take` picks it from the front), run in a task of its own, so a caller that goes away (its
  task cancelled) leaves the batch running for the others;
- with `in_flight` 2 the next batch starts once the previous one holds its row locks (`run` sets the
  event it is given), so it does its work before the locks meanwhile and then waits on the locks the
  previous one holds, which Postgres grants in order: batches still lock, decide and commit in arrival
  order, and a hot row lock is never idle between them.

Each member gets its own answer, or its own exception (a refusal is an answer that is an exception); an
error of the whole batch (after `Database.write`'s deadlock retries) fails every member with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

R = TypeVar("R")


class Member(Protocol[R]):
    """A queued request: its caller waits on `future`."""

    @property
    def future(self) -> asyncio.Future[R]: ...


M = TypeVar("M", bound=Member)  # type: ignore[type-arg]


@dataclass(eq=False, slots=True)
class _Lane(Generic[M]):
    queue: deque[M] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    # the request that found the lane idle is running alone (in its caller's own task)
    solo: bool = False


class Lanes(Generic[M, R]):
    """The lanes of one path, by key (what members must share: database, tenant, API key...).

    `take(queue)`: the next batch, removed from the front of the queue, in arrival order (it may leave
    a member at the front for a later batch). `run(batch, locked)`: one answer per member, an answer
    being a value or an Exception to raise in that member's caller; it sets `locked` once it holds its
    row locks. `in_flight(member)`: how many batches may be in flight at once (1 or 2)."""

    def __init__(
        self,
        take: Callable[[deque[M]], list[M]],
        run: Callable[[list[M], asyncio.Event], Awaitable[Sequence[R | Exception]]],
        in_flight: Callable[[M], int],
    ) -> None:
        self._take = take
        self._run = run
        self._in_flight = in_flight
        self._lanes: dict[Hashable, _Lane[M]] = {}

    async def submit(
        self, key: Hashable, member: Callable[[asyncio.Future[R]], M], alone: Callable[[], Awaitable[R]]
    ) -> R:
        """`alone()` when the lane is idle, else the answer of the batch `member(future)` joins."""
        loop = asyncio.get_running_loop()
        key = (id(loop), key)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(solo=True)
            try:
                return await alone()
            finally:
                # the queue that formed meanwhile becomes the first batch (also when this caller was cancelled)
                lane.solo = False
                if lane.queue and lane.task is None:
                    lane.task = asyncio.create_task(self._drain(key, lane))
                elif not lane.queue and lane.task is None and self._lanes.get(key) is lane:
                    del self._lanes[key]
        future: asyncio.Future[R] = loop.create_future()
        lane.queue.append(member(future))
        if lane.task is None and not lane.solo:
            # a task of its own: a caller cancelled mid-batch must not cancel the others' transaction
            lane.task = asyncio.create_task(self._drain(key, lane))
        return await future

    async def _drain(self, key: Hashable, lane: _Lane[M]) -> None:
        """Run the lane's batches until its queue is empty and none is in flight, then forget the lane."""
        flying: deque[asyncio.Task[None]] = deque()  # batches started, oldest first
        try:
            while lane.queue or flying:
                if not lane.queue:
                    await asyncio.shield(flying.popleft())
                    continue
                batch = [m for m in self._take(lane.queue) if not m.future.done()]  # done: its caller left
                if not batch:
                    continue
                locked = asyncio.Event()
                current = asyncio.create_task(self._serve(batch, locked))
                in_flight = self._in_flight(batch[0])
                if in_flight < 2:
                    await asyncio.shield(current)  # one at a time: the next batch starts after this one's commit
                    continue
                waiting = asyncio.create_task(locked.wait())
                try:
                    await asyncio.wait((current, waiting), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                flying.append(current)
                while len(flying) >= in_flight:
                    await asyncio.shield(flying.popleft())  # at most in_flight in flight
        finally:
            # also when this task itself is cancelled (the loop shutting down): nobody is left waiting (a
            # batch already started answers its members from its own task)
            for m in lane.queue:
                if not m.future.done():
                    m.future.cancel()
            lane.queue.clear()
            lane.task = None
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _serve(self, batch: list[M], locked: asyncio.Event) -> None:
        """One batch, its answers given to its members; never raises (each member gets the batch's error)."""
        try:
            answers = await self._run(batch, locked)
        except BaseException as exc:  # every member gets the batch's error, none is left waiting
            for m in batch:
                if not m.future.done():
                    if isinstance(exc, Exception):
                        m.future.set_exception(exc)
                    else:
                        m.future.cancel()
            if not isinstance(exc, Exception):
                raise  # this task cancelled (the loop shutting down)
            return
        finally:
            locked.set()  # the next batch may start (also when this one ended before taking the lock)
        for m, answer in zip(batch, answers, strict=True):
            if m.future.done():
                continue
            if isinstance(answer, Exception):
                m.future.set_exception(answer)
            else:
                m.future.set_result(answer)
