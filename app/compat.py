"""The only place app/ relies on a library's internals (issue 13: no private library APIs elsewhere).

Each name below says which versions it was checked against and why no public API does the job;
tests/test_compat.py has one test per internal relied on, so an upgrade that moves one fails in CI
instead of in production. pyproject.toml bounds these libraries to the checked ranges, and
tests/test_compat.py::test_no_module_but_compat_touches_library_internals keeps the rest of app/ out.
"""

from __future__ import annotations

import contextlib
import inspect
from asyncio import iscoroutinefunction
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cached_property, partial
from typing import Any

from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn
from strawberry import Schema
from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import (
    ExecutingContextManager,
    OperationContextManager,
    ParsingContextManager,
    StreamResultContextManager,
    ValidationContextManager,
    WrappedHook,
)
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import ExecutionContext
from strawberry.types.execution import StreamExecutionResult
from strawberry.utils.await_maybe import await_maybe

# --- SQLAlchemy's asyncpg adapter -----------------------------------------------------------------


async def begin_driver_transaction(dbapi_connection: Any) -> None:
    """Send the BEGIN SQLAlchemy's asyncpg adapter owes `dbapi_connection`, if it has not yet.

    Checked against SQLAlchemy 2.1.9, the locked version; pyproject.toml allows <2.2
    (`AsyncAdapt_asyncpg_connection._transaction` and `_start_transaction`). SQLAlchemy begins the
    database transaction lazily, with the first statement sent through its cursor; a statement sent
    on the asyncpg connection before that would run outside the transaction. The DBAPI has no
    begin() (PEP 249), and making SQLAlchemy send a statement first costs a round trip and its
    ~200 us of statement overhead on every write.
    """
    if dbapi_connection._transaction is None:
        await dbapi_connection._start_transaction()


def checkout_at_once(engine: AsyncEngine) -> Any | None:
    """A connection from the engine's pool taken without `greenlet_spawn` when taking it needs no I/O
    (an idle connection waiting in the pool), else None: the caller then takes the awaited way,
    `AsyncEngine.raw_connection()`.

    Checked against SQLAlchemy 2.1.9, the locked version; pyproject.toml allows <2.2 (`Pool._recycle`,
    `Pool._invalidate_time`, `Pool._pre_ping`, `QueuePool._pool`, `AsyncAdaptedQueue._queue` and
    `use_lifo`, `_ConnectionRecord.dbapi_connection`, `starttime` and `_soft_invalidate_time`, the
    checks of `_ConnectionRecord.get_connection`; `AsyncAdaptedQueue.get` takes an item already there
    without awaiting). Why: `raw_connection()` and its `return_pooled` are a greenlet each, about 30 us
    of CPU per transaction of the ~1,100 us a SPREAD reserve costs the server (tests/test_driver_checkout.py).
    The synchronous checkout is the pool's own (`Engine.raw_connection()`: its size, overflow, events
    and record-keeping), taken only when it cannot need a connection opened or closed: an idle one
    is queued, no pre-ping, no recycling and no pool-wide invalidation (which close the connection,
    I/O that would be lost here), and the record it would hand out still has its connection (one
    discarded, invalidated, needs a new one). Should opening one be needed after all, `await_`
    refuses with MissingGreenlet before anything is sent and the pool checks the record back in
    (`_ConnectionRecord._checkin_failed`): None, nothing leaks.
    """
    pool = engine.sync_engine.pool
    if not isinstance(pool, QueuePool) or pool.checkedin() == 0 or pool._pre_ping or pool._recycle > -1:
        return None
    # the record the pool hands out next (asyncio.Queue's deque: FIFO from the left, LIFO from the right)
    queue: Any = pool._pool
    waiting = queue._queue._queue
    record = waiting[-1] if queue.use_lifo else waiting[0]
    if (
        record.dbapi_connection is None  # discarded: its next connection is opened (I/O)
        or pool._invalidate_time > record.starttime  # invalidated since: closed and re-opened
        or record._soft_invalidate_time > record.starttime
    ):
        return None
    try:
        return engine.sync_engine.raw_connection()
    except MissingGreenlet:  # pragma: no cover (the checks above): the record is back in the pool
        return None


def return_at_once(pooled: Any) -> bool:
    """Give back a connection taken from a QueuePool without `greenlet_spawn` when that needs no I/O;
    False (nothing done) when it might: the caller then uses `return_pooled`.

    Checked against SQLAlchemy 2.1.9, the locked version; pyproject.toml allows <2.2
    (`PoolProxiedConnection._pool`, `AsyncAdapt_asyncpg_connection._transaction`). Returning does I/O
    only to roll back a transaction the adapter began (its reset on return), or to close an overflow
    connection the pool has no room for; neither is the case when the adapter has no transaction
    open and the pool's queue has room (one event loop: nothing changes in between).
    """
    pool = pooled._pool
    dbapi_connection = pooled.dbapi_connection
    if (
        not isinstance(pool, QueuePool)
        or dbapi_connection is None
        or getattr(dbapi_connection, "_transaction", True) is not None
        or pool.checkedin() >= pool.size()
    ):
        return False
    pooled.close()
    return True


async def return_pooled(pooled: Any, discard: bool = False) -> None:
    """Give back a connection taken with `AsyncEngine.raw_connection()` (closed instead if `discard`).

    Checked against SQLAlchemy 2.1.9, the locked version; pyproject.toml allows <2.2
    (`sqlalchemy.util.greenlet_spawn`). `PoolProxiedConnection.close()` and `invalidate()` are
    synchronous and may do I/O (the pool closes a connection beyond its size; invalidating closes it),
    which SQLAlchemy's asyncpg adapter can only await inside a greenlet it spawned: AsyncConnection
    does the same with `greenlet_spawn`, and no public coroutine gives a raw connection back.
    """
    await greenlet_spawn(pooled.invalidate if discard else pooled.close)


# --- Strawberry -----------------------------------------------------------------------------------


def provided_operation_name(context: ExecutionContext) -> str | None:
    """The operationName the client sent (None if none), not the one Strawberry picked for it.

    Checked against strawberry-graphql 0.341.2, the locked version; pyproject.toml allows <0.342
    (`ExecutionContext._provided_operation_name`).
    The public `operation_name` falls back to the first operation's name, so it cannot tell "the
    client named the first operation" from "the client named none" in a document with several.
    """
    name = context._provided_operation_name
    return name if isinstance(name, str) else None


def core_schema(context: ExecutionContext) -> Any:
    """The graphql-core schema an operation runs against (what Strawberry's validation takes).

    Checked against strawberry-graphql 0.341.2, the locked version (`Schema._schema`, which Strawberry's
    own ValidationCache passes to `validate_document`). app/graphql/document_cache.py validates through
    the same function with a cache keyed by the query text; Strawberry exposes the schema no other way.
    """
    return graphql_core_schema(context.schema)


def graphql_core_schema(schema: Schema) -> Any:
    """The graphql-core schema a Strawberry schema executes on (`Schema._schema`, as `core_schema`).

    Checked against strawberry-graphql 0.341.2, the locked version. app/graphql/known_documents.py
    executes a known document on graphql-core directly, as `Schema.execute` itself does with this
    schema; Strawberry exposes it no other way.
    """
    return schema._schema


# Strawberry's resolve info for graphql-core executors of our own: keeps `operation_extensions` and the
# plain variables dict resolvers expect. Checked against strawberry-graphql 0.341.2 (locked): the class lives
# in strawberry.schema.schema, outside Strawberry's exported names, and its info class is private.
build_strawberry_resolve_info = StrawberryGraphQLCoreExecutionContext.build_resolve_info


_Factory = tuple[Callable[[Any], Any], bool]
_factories: dict[tuple[type, str], _Factory | None] = {}


def _hook_factory(cls: type, name: str) -> _Factory | None:
    try:
        return _factories[(cls, name)]
    except KeyError:
        made = _factories[(cls, name)] = _make_hook_factory(cls, name)
        return made


def _make_hook_factory(cls: type, name: str) -> _Factory | None:
    """`cls`'s hook `name` as a context manager factory taking the extension, and whether it is async;
    None when `cls` does not implement the hook. What Strawberry's `ExtensionContextManagerBase.get_hook`
    builds for one extension object on every operation (a `contextlib` decorator, with its
    `update_wrapper`, per hook per request), built once per class here: same hooks, same semantics."""
    hook_fn = getattr(cls, name)
    if hook_fn is getattr(SchemaExtension, name):
        return None
    if inspect.isgeneratorfunction(hook_fn):
        return contextlib.contextmanager(hook_fn), False
    if inspect.isasyncgenfunction(hook_fn):
        return contextlib.asynccontextmanager(hook_fn), True
    if not callable(hook_fn):
        raise ValueError(f"Hook {name} on {cls} must be callable, received {hook_fn!r}")
    if iscoroutinefunction(hook_fn):

        @contextlib.asynccontextmanager
        async def awaited(extension: Any) -> AsyncIterator[None]:
            await hook_fn(extension)
            yield

        return awaited, True

    @contextlib.contextmanager
    def called(extension: Any) -> Iterator[None]:
        hook_fn(extension)
        yield

    return called, False


class _CachedHooks:
    """`get_hook` from the per-class factories (mixed into Strawberry's context managers)."""

    HOOK_NAME: str

    def get_hook(self, extension: SchemaExtension) -> WrappedHook | None:
        made = _hook_factory(type(extension), self.HOOK_NAME)
        if made is None:
            return None
        return WrappedHook(extension=extension, hook=partial(made[0], extension), is_async=made[1])


class _Operation(_CachedHooks, OperationContextManager):
    __slots__ = ()


class _Validation(_CachedHooks, ValidationContextManager):
    __slots__ = ()


class _Parsing(_CachedHooks, ParsingContextManager):
    __slots__ = ()


class _Executing(_CachedHooks, ExecutingContextManager):
    __slots__ = ()


class LeanExtensionsRunner(SchemaExtensionsRunner):
    """Strawberry's runner, asking only the extensions that implement a hook.

    Checked against strawberry-graphql 0.341.2, the locked version (`Schema.create_extensions_runner`,
    `SchemaExtensionsRunner`, `StreamResultContextManager`, `ExtensionContextManagerBase.get_hook`,
    `WrappedHook`, none documented). Strawberry builds a
    context over every extension for each streamed result and asks every one for results, hooks or
    not: for a subscription message that cost about as much as executing it (profiled under the
    fan-out benchmark). No public option narrows that. Which extensions implement `on_stream_result`
    and `get_results` is decided by their class, so it is looked up once per operation.
    The operation, parsing, validation and execution hooks are Strawberry's context managers with their
    hooks' `contextlib` wrappers made once per extension class (`_hook_factory`) instead of once per
    hook per request: about a tenth of an authenticated `{ __typename }`'s execution (profiled).
    """

    @cached_property
    def streaming(self) -> list[SchemaExtension]:
        return [e for e in self.extensions if type(e).on_stream_result is not SchemaExtension.on_stream_result]

    @cached_property
    def reporting(self) -> list[SchemaExtension]:
        return [e for e in self.extensions if type(e).get_results is not SchemaExtension.get_results]

    def operation(self) -> OperationContextManager:
        return _Operation(self.extensions)

    def validation(self) -> ValidationContextManager:
        return _Validation(self.extensions)

    def parsing(self) -> ParsingContextManager:
        return _Parsing(self.extensions)

    def executing(self) -> ExecutingContextManager:
        return _Executing(self.extensions)

    def on_stream_result(self, result: StreamExecutionResult) -> StreamResultContextManager:
        return StreamResultContextManager(self.streaming, result)

    async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for extension in self.reporting:
            data.update(await await_maybe(extension.get_results()))
        data.update(ctx.extensions_results)
        return data


class LeanExtensionsSchema(Schema):
    """A Strawberry schema whose operations run their extensions with `LeanExtensionsRunner`."""

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return LeanExtensionsRunner(execution_context=execution_context, extensions=extensions)


def refuse(extension: Any, permission: Any) -> Any:
    """What Strawberry's PermissionExtension does when `permission` refuses a field: raise its error
    (or return None for an optional field, when the permission says so).

    Checked against strawberry-graphql 0.341.2, the locked version (`PermissionExtension._on_unauthorized`).
    app/graphql/permissions.py replaces the extension's resolve to check scopes in one pass; Strawberry
    has no public method that turns a refusing permission into its error.
    """
    return extension._on_unauthorized(permission)


def default_resolved_field(field_def: Any) -> Any | None:
    """The StrawberryField behind a graphql-core field that Strawberry resolves with its default
    resolver (the attribute, read by `field.default_resolver`), or None when the field runs anything
    else (a resolver, a field extension, an exception handler).

    Checked against strawberry-graphql 0.341.2, the locked version (`GraphQLCoreConverter.from_resolver`
    gives such a field `_get_basic_result`, marked `_is_default`; a field without a resolver of its
    own but with extensions or exception handlers gets another resolver, marked `_is_default` too).
    app/graphql/plain_fields.py completes such fields without graphql-core's per-field machinery;
    `StrawberryField.is_basic_field` alone does not say whether the schema wrapped the resolver.
    """
    resolve = field_def.resolve
    if not getattr(resolve, "_is_default", False) or getattr(resolve, "__name__", "") != "_get_basic_result":
        return None
    return field_def.extensions.get("strawberry-definition")


# --- uvicorn --------------------------------------------------------------------------------------


def upgrading_to_websocket(protocol: Any) -> bool:
    """Whether the request uvicorn's httptools protocol has just read is a websocket upgrade it will accept.

    Checked against uvicorn 0.55.0, the locked version (`HttpToolsProtocol._should_upgrade`, the test
    uvicorn itself makes in `on_headers_complete`). app/serving.py must know it to stop the body
    deadline for an upgraded connection; uvicorn exposes no public flag.
    """
    return bool(protocol.parser.should_upgrade() and protocol._should_upgrade())
