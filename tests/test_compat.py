"""app/compat.py: one test per library internal it relies on, and no other module of app/ relying on any.

Each test asserts that the internal still exists and still behaves as app/compat.py assumes, so a
library upgrade that moves it fails here, not in production.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from collections.abc import AsyncGenerator, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import strawberry
from graphql.execution import Executor
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from strawberry.exceptions import StrawberryGraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.permission import BasePermission, PermissionExtension

import app
from app import compat

APP = Path(app.__file__).parent

# --- SQLAlchemy's asyncpg adapter -----------------------------------------------------------------


@pytest.mark.postgres
async def test_begin_driver_transaction_puts_asyncpg_statements_in_sqlalchemys_transaction(
    database_url: str,
) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            assert raw.dbapi_connection._transaction is None  # SQLAlchemy has sent no BEGIN yet
            assert not driver.is_in_transaction()
            await compat.begin_driver_transaction(raw.dbapi_connection)
            assert driver.is_in_transaction()
            await compat.begin_driver_transaction(raw.dbapi_connection)  # a second call sends nothing
            await driver.execute("CREATE TEMP TABLE compat_probe (v int)")
            await driver.execute("INSERT INTO compat_probe VALUES (7)")
            # SQLAlchemy's next statement runs in the same transaction, not in a BEGIN of its own
            assert (await conn.execute(text("SELECT v FROM compat_probe"))).scalar_one() == 7
            await conn.rollback()
            assert not driver.is_in_transaction()
            missing = await conn.execute(text("SELECT to_regclass('pg_temp.compat_probe') IS NULL"))
            assert missing.scalar_one() is True  # the rollback undid what ran on asyncpg directly
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_return_pooled_gives_a_raw_connection_back_or_closes_it(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=1)
    try:
        pool: Any = engine.sync_engine.pool
        pooled = await engine.raw_connection()
        first = pooled.driver_connection
        assert pool.checkedout() == 1
        await compat.return_pooled(pooled)
        assert pool.checkedout() == 0
        again = await engine.raw_connection()
        assert again.driver_connection is first  # it was back in the pool, open
        overflow = await engine.raw_connection()  # beyond the pool's size
        extra = overflow.driver_connection
        await compat.return_pooled(again)
        await compat.return_pooled(overflow)  # the pool is full: closed
        assert extra.is_closed() and not first.is_closed()
        again = await engine.raw_connection()
        assert again.driver_connection is first
        await compat.return_pooled(again, discard=True)
        assert first.is_closed() and pool.checkedout() == 0
        fresh = await engine.raw_connection()
        assert fresh.driver_connection is not first
        await compat.return_pooled(fresh)
    finally:
        await engine.dispose()


# --- Strawberry -----------------------------------------------------------------------------------


@strawberry.type
class _Query:
    @strawberry.field
    def echo(self, info: strawberry.Info, word: str = "hi") -> str:
        # what build_strawberry_resolve_info must give resolvers: the plain variables dict
        assert isinstance(info.variable_values, dict)
        return word


class _Seen(SchemaExtension):
    names: list[str | None] = []

    def on_operation(self) -> Iterator[None]:
        _Seen.names.append(compat.provided_operation_name(self.execution_context))
        yield


async def test_provided_operation_name_is_what_the_client_sent_not_strawberrys_pick() -> None:
    schema = strawberry.Schema(query=_Query, extensions=[_Seen])
    _Seen.names = []
    await schema.execute("query A { echo } query B { echo }", operation_name="A")
    await schema.execute("query A { echo }")
    assert _Seen.names == ["A", None]


class _WithStrawberryInfo(Executor):  # type: ignore[type-arg]
    build_resolve_info = compat.build_strawberry_resolve_info

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        operation_extensions = kwargs.pop("operation_extensions", None)  # as app/graphql/fanout.py does
        super().__init__(*args, **kwargs)
        self.operation_extensions = operation_extensions


async def test_strawberry_resolve_info_serves_a_graphql_core_executor_of_our_own() -> None:
    schema = strawberry.Schema(query=_Query, execution_context_class=_WithStrawberryInfo)
    result = await schema.execute("query Q($w: String!) { echo(word: $w) }", variable_values={"w": "yes"})
    assert result.errors is None
    assert result.data == {"echo": "yes"}


class _Reports(SchemaExtension):
    def get_results(self) -> dict[str, Any]:
        return {"reported": 1}


class _Streams(SchemaExtension):
    seen: list[object] = []

    def on_stream_result(self, result: Any) -> Iterator[None]:
        _Streams.seen.append(result.data)
        yield


class _Quiet(SchemaExtension):
    """No hooks at all: the lean runner never asks it."""


@strawberry.type
class _Subscription:
    @strawberry.subscription
    async def count(self) -> AsyncGenerator[int, None]:
        for n in (1, 2):
            yield n


async def test_the_lean_runner_is_strawberrys_runner_and_asks_only_extensions_with_the_hook() -> None:
    made: list[SchemaExtensionsRunner] = []

    class Recording(compat.LeanExtensionsSchema):
        def create_extensions_runner(
            self, execution_context: Any, extensions: list[SchemaExtension]
        ) -> SchemaExtensionsRunner:
            runner = super().create_extensions_runner(execution_context, extensions)
            made.append(runner)
            return runner

    schema = Recording(query=_Query, subscription=_Subscription, extensions=[_Reports, _Streams, _Quiet])
    result = await schema.execute("{ echo }")
    assert result.extensions == {"reported": 1}  # get_results asked through the runner
    (runner,) = made
    assert isinstance(runner, compat.LeanExtensionsRunner)
    assert [type(e) for e in runner.reporting] == [_Reports]
    assert [type(e) for e in runner.streaming] == [_Streams]

    _Streams.seen = []
    stream = await schema.subscribe("subscription { count }")
    assert not isinstance(stream, type(result))
    got = [r.data async for r in stream]  # type: ignore[union-attr]
    assert got == [{"count": 1}, {"count": 2}]
    assert _Streams.seen == got  # every streamed result went through the runner's on_stream_result


class _Hooks(SchemaExtension):
    """One hook of every kind Strawberry accepts: generator, async generator, plain and coroutine."""

    log: list[str] = []

    def on_operation(self) -> Iterator[None]:
        _Hooks.log.append("operation>")
        try:
            yield
        except Exception as exc:  # an error inside the operation reaches a generator hook, as with contextlib
            _Hooks.log.append(f"operation!{type(exc).__name__}")
            raise
        _Hooks.log.append("operation<")

    async def on_parse(self) -> AsyncGenerator[None, None]:
        _Hooks.log.append("parse>")
        yield
        _Hooks.log.append("parse<")

    def on_validate(self) -> None:  # type: ignore[override]
        _Hooks.log.append("validate")

    async def on_execute(self) -> None:  # type: ignore[override]
        _Hooks.log.append("execute")


class _Fails(SchemaExtension):
    def on_validate(self) -> Iterator[None]:
        yield
        raise RuntimeError("after validation")


@pytest.mark.parametrize("lean", [False, True])
async def test_the_lean_runner_runs_every_kind_of_hook_as_strawberrys_does(lean: bool) -> None:
    kind = compat.LeanExtensionsSchema if lean else strawberry.Schema
    _Hooks.log = []
    result = await kind(query=_Query, extensions=[_Hooks, _Quiet]).execute("{ echo }")
    assert result.data == {"echo": "hi"}
    assert _Hooks.log == ["operation>", "parse>", "parse<", "validate", "execute", "operation<"]
    _Hooks.log = []
    failed = await kind(query=_Query, extensions=[_Hooks, _Fails]).execute("{ echo }")
    assert [e.message for e in failed.errors or []] == ["after validation"]
    assert _Hooks.log == ["operation>", "parse>", "parse<", "validate", "operation!RuntimeError"]


async def test_refuse_is_the_error_strawberrys_permission_extension_raises() -> None:
    class Never(BasePermission):
        message = "not for you"

        def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
            return False

    extension = PermissionExtension(permissions=[Never()])
    with pytest.raises(StrawberryGraphQLError, match="not for you"):
        compat.refuse(extension, extension.permissions[0])


# --- uvicorn --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("upgrade", "expected"), [(b"websocket", True), (b"h2c", False), (None, False)])
async def test_upgrading_to_websocket_is_uvicorns_own_test(upgrade: bytes | None, expected: bool) -> None:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=None, ws="websockets-sansio")
    config.load()
    protocol = HttpToolsProtocol(config, ServerState(), app_state={})

    class Parser:
        def should_upgrade(self) -> bool:
            return upgrade is not None

    protocol.parser = Parser()  # type: ignore[assignment]
    protocol.headers = [(b"connection", b"upgrade")] + ([(b"upgrade", upgrade)] if upgrade else [])
    assert compat.upgrading_to_websocket(protocol) is expected


class _Loud(strawberry.extensions.FieldExtension):
    def resolve(self, next_: Any, source: Any, info: Any, **kwargs: Any) -> Any:
        return next_(source, info, **kwargs)


@strawberry.type(name="Thing")
class _Thing:
    plain: int
    renamed_here: str = "x"
    extended: int = strawberry.field(default=1, extensions=[_Loud()])

    @strawberry.field
    def made(self) -> int:
        return 2


@strawberry.type
class _ThingQuery:
    thing: _Thing


def test_default_resolved_field_is_the_strawberry_field_of_an_attribute_read_and_of_nothing_else() -> None:
    fields = compat.graphql_core_schema(strawberry.Schema(query=_ThingQuery)).type_map["Thing"].fields
    plain = compat.default_resolved_field(fields["plain"])
    renamed = compat.default_resolved_field(fields["renamedHere"])
    assert (plain.python_name, renamed.python_name) == ("plain", "renamed_here")
    assert plain.default_resolver(_Thing(plain=5), plain.python_name) == 5
    assert compat.default_resolved_field(fields["made"]) is None
    assert compat.default_resolved_field(fields["extended"]) is None


# --- nothing else in app/ touches a library's internals --------------------------------------------
# (ruff's SLF001 refuses `obj._name` in app/ outside app/compat.py; these catch what it cannot see)


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(APP.rglob("*.py")):
        if path.name != "compat.py" or path.parent != APP:
            yield str(path.relative_to(APP.parent)), ast.parse(path.read_text(), str(path))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and not name.endswith("_")


def _internals(where: str, tree: ast.Module) -> list[str]:
    """Imports of a library's private module, getattr-style reads of a private name, super()._name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "app" and any(_private(p) for p in parts):
                found.append(f"{where}:{node.lineno} from {node.module} import")
        elif isinstance(node, ast.Import):
            found += [
                f"{where}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] != "app" and any(_private(p) for p in a.name.split("."))
            ]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                    found.append(f"{where}:{node.lineno} {node.func.id}(..., {name.value!r})")
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "super"
        ):
            found.append(f"{where}:{node.lineno} super().{node.attr}")
    return found


def test_no_module_but_compat_touches_library_internals() -> None:
    assert [hit for where, tree in _modules() for hit in _internals(where, tree)] == []


def _overrides(cls: type) -> list[str]:
    """Methods `_name` that `cls` defines and a library base class of it defines too.

    (Only code: attributes like `_is_protocol` or `_abc_impl` are set on every class by Python.)"""
    library = [b for b in cls.__mro__[1:] if not b.__module__.startswith("app.") and b is not object]
    return [
        f"{name} (from {base.__module__}.{base.__name__})"
        for name, value in vars(cls).items()
        if _private(name) and _code(value)
        for base in library
        if _code(vars(base).get(name))
    ]


def _code(value: object) -> bool:
    return inspect.isfunction(value) or isinstance(value, property | classmethod | staticmethod | cached_property)


def test_no_class_in_app_overrides_a_librarys_private_method() -> None:
    """A class of ours redefining `_name` of a library base class relies on that base's internals."""
    found = [f"{cls.__module__}.{cls.__name__}.{hit}" for cls in _app_classes() for hit in _overrides(cls)]
    assert found == []


def _app_classes() -> Iterator[type]:
    for info in pkgutil.walk_packages([str(APP)], "app."):
        if info.name == "app.compat":
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == info.name:
                yield cls


def _inherited_internals(cls: type) -> list[str]:
    """`self._name` read in `cls`'s own code where `_name` comes from a library base class
    (no app class of its MRO defines or assigns it)."""
    home = cls.__module__.split(".")[0]  # app (or tests, for the guard's own test)
    ours = [b for b in cls.__mro__ if b.__module__.split(".")[0] == home]
    if len(ours) + 1 == len(cls.__mro__):
        return []  # no library base
    own: set[str] = set()
    for base in ours:
        own |= set(vars(base))
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(base)))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
    return [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls))))
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Load)
        and _private(node.attr)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("self", "cls")
        and node.attr not in own
    ]


def test_no_class_in_app_reads_a_library_base_classs_private_attribute() -> None:
    found = [f"{cls.__module__}.{cls.__name__}: {hit}" for cls in _app_classes() for hit in _inherited_internals(cls)]
    assert found == []


def test_the_guard_sees_what_it_looks_for() -> None:
    """Each kind of access the checks look for is caught (so their empty lists mean something)."""
    source = (
        "import broadcaster._backends.memory\n"
        "from broadcaster._backends.memory import MemoryBackend\n"
        "backend = getattr(broadcast, '_backend', None)\n"
        "class S(Schema):\n"
        "    def f(self):\n"
        "        return super()._create_execution_context()\n"
    )
    assert [hit.split(" ", 1)[1] for hit in _internals("x.py", ast.parse(source))] == [
        "import broadcaster._backends.memory",
        "from broadcaster._backends.memory import",
        "getattr(..., '_backend')",
        "super()._create_execution_context",
    ]

    class Masking(SchemaExtension):
        def _process_result(self, result: object) -> None: ...

    from strawberry.extensions import MaskErrors

    class Overriding(MaskErrors):
        def _process_result(self, result: object) -> None: ...

    assert _overrides(Overriding) == ["_process_result (from strawberry.extensions.mask_errors.MaskErrors)"]
    assert _overrides(Masking) == []

    class Reading(MaskErrors):
        def on_operation(self) -> Iterator[None]:
            self._mine = 1
            self._process_result(self._mine)
            yield

    assert _inherited_internals(Reading) == ["self._process_result"]


def test_core_schema_is_the_graphql_core_schema_strawberry_validates_against() -> None:
    from graphql import GraphQLSchema
    from strawberry.types import ExecutionContext

    @strawberry.type
    class Q:
        x: int = 1

    schema = strawberry.Schema(query=Q)
    context = ExecutionContext(query="{ x }", schema=schema, allowed_operations=(), context=None)
    core = compat.core_schema(context)
    assert isinstance(core, GraphQLSchema)
    assert core.query_type is not None and core.query_type.name == "Q"
