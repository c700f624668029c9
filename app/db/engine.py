"""The database handle: one engine, transactions with deadlock retry, and a commit signal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.compat import checkout_at_once, return_at_once, return_pooled
from app.db import tenancy

log = logging.getLogger("stockwire.db")
T = TypeVar("T")

# Postgres aborts one side of a deadlock or serialisation conflict; the whole transaction is retried.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_MAX_ATTEMPTS = 5


Pair = tuple[int, int]  # (sku_id, location_id)
# after a commit: the positions it changed, whether it wrote outbox rows of other kinds, and the
# tenant it ran for (None: system mode)
CommitListener = Callable[[frozenset[Pair], bool, int | None], None]


class _Written:
    """What the running write transaction queued for publication, for its commit listeners."""

    __slots__ = ("other_rows", "pairs")

    def __init__(self) -> None:
        self.pairs: set[Pair] = set()
        self.other_rows = False


_written: ContextVar[_Written | None] = ContextVar("stockwire_written", default=None)

_generic_plans: ContextVar[bool] = ContextVar("stockwire_generic_plans", default=False)
# sent after the tenant's prelude in the BEGIN's own message (see _ScopedConnection): no round trip
_GENERIC_PLANS = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"


@contextmanager
def generic_plans() -> Iterator[None]:
    """Transactions begun inside run their prepared statements on the generic plan Postgres makes
    once per connection and statement, never re-planned for the parameters (`SET LOCAL`: the
    connection goes back to the pool with the default).

    Why: under the default (`auto`) a statement whose parameters are arrays (an ingested batch's
    `unnest`s, the relay's SKU lists) may keep getting custom plans, planned again on every execution,
    while its plan does not depend on the values (index look-ups per element, whatever the sizes). An
    earlier round measured that re-planning as a cost of the ingest; on this branch's bench database
    look_up and the lock took the same time either way (medians within 0.3 ms), so this is cheap
    insurance for the paths that run them hot (record_events, the relay's hinted read), not a default
    for every statement."""
    token = _generic_plans.set(True)
    try:
        yield
    finally:
        _generic_plans.reset(token)


def note_changed(pairs: Iterable[Pair]) -> None:
    """Tell the commit listeners which positions this transaction changed (stock.enqueue_changes does).

    Only a hint, for speed: the outbox rows written in the same transaction remain the guarantee.
    """
    written = _written.get()
    if written is not None:
        written.pairs.update(pairs)


def note_outbox_rows() -> None:
    """Tell the commit listeners this transaction wrote outbox rows not named by `note_changed`
    (bulk inserts: a location switched off, a channel's rules); the relay then claims them at once.
    Forgetting it delays their publication to the relay's next poll, it does not lose them."""
    written = _written.get()
    if written is not None:
        written.other_rows = True


def _sqlstate(exc: DBAPIError) -> str | None:
    orig: Any = exc.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def as_sqlalchemy_error(exc: asyncpg.PostgresError, statement: str, args: Any) -> DBAPIError:
    """An asyncpg error as SQLAlchemy raises it: IntegrityError for a constraint (SQLSTATE 23...), else
    DBAPIError, the asyncpg error as `.orig` (so `_sqlstate` and the deadlock retry read it)."""
    if str(getattr(exc, "sqlstate", "")).startswith("23"):
        return IntegrityError(statement, args, exc)
    return DBAPIError(statement, args, exc)


def is_unique_violation(exc: DBAPIError) -> bool:
    return _sqlstate(exc) == "23505"


class Database:
    """`role`: the role every pooled connection switches to (`SET ROLE`), so that row-level security
    applies even when the login is a superuser (tests, the embedded default); None keeps the login's
    own rights (migrations, maintenance)."""

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        max_overflow: int = 10,
        role: str | None = tenancy.APP_ROLE,
        pool_timeout: float = 30.0,
    ) -> None:
        self.url = url
        # PostgreSQL only (the embedded default is one too, app/db/embedded.py): concurrent writers are
        # ordered by its row locks and conditional updates, nothing in this process has to queue them
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=False,
            connect_args={"connection_class": _ScopedConnection},
        )
        if role is not None:
            event.listen(self.engine.sync_engine, "connect", _switch_role(role))
        self._commit_listeners: list[CommitListener] = []

    def on_commit(self, listener: CommitListener) -> None:
        """Called after every committed write transaction that queued something for publication
        (`note_changed`, `note_outbox_rows`): the outbox relay wakes on it."""
        self._commit_listeners.append(listener)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction scoped to the current tenant (its BEGIN says which: _ScopedConnection),
        committed at the end (no retry: see `write`)."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def begin_driver(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction like `begin`, on the pooled asyncpg connection itself (statements through
        app/db/pg.py), without SQLAlchemy's Connection around it: its connection, transaction and
        greenlet hops cost about 150 us of CPU per transaction (a reserve's whole service work is
        ~600 us). The same pool, the same connections (role switched, statements prepared), the same
        tenant in the BEGIN (_ScopedConnection). A connection that might still be in a transaction (a
        COMMIT or ROLLBACK interrupted) is closed, never handed back to the pool."""
        # taken and given back without a greenlet when the pool needs no I/O for it (app/compat.py)
        pooled = checkout_at_once(self.engine) or await self.engine.raw_connection()
        conn: asyncpg.Connection = pooled.driver_connection
        try:
            async with conn.transaction():
                yield conn
        except asyncpg.PostgresError as exc:  # the COMMIT's own (a deferred check), raised as pg.run raises
            raise as_sqlalchemy_error(exc, "COMMIT", ()) from exc
        finally:
            discard = conn.is_closed() or conn.is_in_transaction()
            if discard or not return_at_once(pooled):
                await return_pooled(pooled, discard=discard)

    async def write(self, work: Callable[[AsyncConnection], Awaitable[T]], notify: bool = True) -> T:
        """Run `work` in one transaction, retried from the start if Postgres picks it as a deadlock victim."""
        return await self._retried(self.begin, work, notify)

    async def write_driver(self, work: Callable[[asyncpg.Connection], Awaitable[T]], notify: bool = True) -> T:
        """`write` on the asyncpg connection (`begin_driver`): `work`'s statements go through app/db/pg.py,
        whose errors are SQLAlchemy's, so deadlocks are retried and callers catch the same errors."""
        return await self._retried(self.begin_driver, work, notify)

    async def _retried(
        self, begin: Callable[[], AbstractAsyncContextManager[Any]], work: Callable[[Any], Awaitable[T]], notify: bool
    ) -> T:
        tenant_id = None if tenancy.in_system_mode() else tenancy.current()
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            written = _Written()
            token = _written.set(written)
            try:
                async with begin() as conn:
                    result = await work(conn)
            except DBAPIError as exc:
                if _sqlstate(exc) in _RETRYABLE_SQLSTATES and attempt < _MAX_ATTEMPTS:
                    log.info("retrying transaction after %s (attempt %d)", _sqlstate(exc), attempt)
                    await asyncio.sleep(0.005 * attempt)
                    continue
                raise
            finally:
                _written.reset(token)
            if notify and (written.pairs or written.other_rows):
                for listener in self._commit_listeners:
                    listener(frozenset(written.pairs), written.other_rows, tenant_id)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction scoped to the current tenant (rolled back when done)."""
        async with self.engine.connect() as conn:
            # a transaction, so its BEGIN carries the tenant even when asyncpg is used straight away
            await conn.begin()
            yield conn

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def warm(self, connections: int) -> int:
        """Open up to `connections` of the pool's steady connections now (at most the pool size), so
        that a burst of requests later finds them open; returns how many the pool holds open.

        Why: the pool opens a connection only when every open one is in use, which is exactly when a
        burst is on, and a new connection is slow to its first answers (a backend forked, the role
        switched, asyncpg's type introspection, every statement prepared again). bench/push.py: a
        27-43 ms pause of the load generator sent a burst that opened 6 connections in B, and the
        changes committed meanwhile reached Redis up to 132 ms after updatedAt (bench/README.md,
        round h24). A connection that cannot be opened now is not an error here: the pool will try
        again when it needs one."""
        wanted = min(connections, self.engine.pool.size())  # type: ignore[attr-defined]
        opened = await asyncio.gather(*(self.engine.connect() for _ in range(wanted)), return_exceptions=True)
        failed = [o for o in opened if isinstance(o, BaseException)]
        for conn in opened:
            if isinstance(conn, AsyncConnection):
                await conn.close()  # back to the pool, open
        if failed:
            log.warning("opened %d of %d database connections at start: %s", wanted - len(failed), wanted, failed[0])
        return int(self.engine.pool.checkedin())  # type: ignore[attr-defined]

    async def dispose(self) -> None:
        await self.engine.dispose()


class _ScopedConnection(asyncpg.Connection):  # type: ignore[misc]
    """Every transaction this service's connections begin is scoped to the current tenant, or to
    system mode (app/db/tenancy.py), in its BEGIN's own round trip: asyncpg begins a transaction with
    one simple-protocol message, which may carry a second statement. A separate statement would cost
    every transaction a round trip (one in nine of a reserve's)."""

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109 (asyncpg's own)
        if not args and query.startswith("BEGIN"):
            query = f"{query} {tenancy.transaction_prelude()};"
            if _generic_plans.get():
                query = f"{query} {_GENERIC_PLANS};"
        status: str = await super().execute(query, *args, timeout=timeout)
        return status


async def act_for(conn: AsyncConnection, tenant_id: int) -> None:
    """Switch the running transaction to the application's role acting for `tenant_id` (the relay
    claims outbox rows of every tenant in system mode, then reads each tenant's changes as that tenant)."""
    from app.db import pg

    await (await pg.driver(conn)).execute(tenancy.tenant_prelude(tenant_id))


def _switch_role(role: str) -> Callable[[Any, Any], None]:
    # only once the role exists: before migration 0011 has run anywhere there is none (and no policy)
    sql = f"SELECT set_config('role', rolname, false) FROM pg_roles WHERE rolname = '{role}'"

    def switch(dbapi_connection: Any, _record: Any) -> None:
        # on the asyncpg connection itself: outside SQLAlchemy's transaction, so it lasts the session
        dbapi_connection.run_async(lambda connection: connection.execute(sql))

    return switch
