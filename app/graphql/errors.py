"""Which errors a client may read, which are faults, and what every error is called.

Faults (an exception nobody raised for the client) are masked to "Unexpected error." with
`extensions.code` INTERNAL_SERVER_ERROR and the request id, and logged once with the traceback and
that id. Everything else keeps its message and gains a stable `extensions.code`: the client caused
it and needs to know what to fix (pitfalls.md #7).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import asyncpg
from graphql import ASTValidationRule, GraphQLError, GraphQLSyntaxError, OperationDefinitionNode
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError
from strawberry.types import ExecutionContext
from strawberry.types.execution import PreExecutionError

from app.compat import LeanExtensionsSchema, provided_operation_name

if TYPE_CHECKING:
    from app.graphql.known_documents import KnownDocuments

log = logging.getLogger("stockwire.errors")

INTERNAL = "INTERNAL_SERVER_ERROR"
MASKED_MESSAGE = "Unexpected error."
UNAVAILABLE = "UNAVAILABLE"
UNAVAILABLE_MESSAGE = "The database is busy or unreachable: try again shortly."


def database_unavailable(error: BaseException | None) -> bool:
    """A fault that says the database could not be reached or had no connection free in time (the pool's
    wait ran out, a refused or lost connection, Postgres out of connection slots or starting): nothing
    about the request, and worth retrying, so the client is told so (UNAVAILABLE) instead of
    "Unexpected error."."""
    seen = 0
    while error is not None and seen < 5:  # the cause chain: SQLAlchemy wraps the driver's error
        if isinstance(error, PoolTimeout | ConnectionError | asyncpg.CannotConnectNowError):
            return True
        if isinstance(error, asyncpg.TooManyConnectionsError | asyncpg.ConnectionDoesNotExistError):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        error = error.__cause__ or (error.orig if isinstance(error, DBAPIError) else None)
        seen += 1
    return False


# (pattern in the message, code): the limit rules report plain validation errors, told apart by text
_LIMITS = (
    (re.compile(r"exceeds maximum operation depth"), "QUERY_TOO_DEEP"),
    (re.compile(r"Maximum introspection depth exceeded"), "QUERY_TOO_DEEP"),
    (re.compile(r"aliases found\. Allowed"), "TOO_MANY_ALIASES"),
    (re.compile(r"Document contains more than \d+ tokens"), "QUERY_TOO_LARGE"),
)


class ErrorPolicy:
    """`visible`: exception types raised on purpose with a message meant for the client."""

    def __init__(self, visible: tuple[type[Exception], ...]) -> None:
        self.visible = visible

    def is_fault(self, error: GraphQLError) -> bool:
        original = error.original_error
        if original is None:
            return False  # parse, validation and limit errors: the client needs the message
        if isinstance(original, GraphQLError):
            return False  # raised as a GraphQL error on purpose (scope checks: FORBIDDEN)
        return not isinstance(original, self.visible)

    def code(self, error: GraphQLError) -> str:
        """The `extensions.code` of an error that is not a fault."""
        given = (error.extensions or {}).get("code")
        if isinstance(given, str):
            return given
        for pattern, code in _LIMITS:
            if pattern.search(error.message):
                return code
        if isinstance(error, GraphQLSyntaxError):
            return "GRAPHQL_PARSE_FAILED"
        if error.original_error is not None or error.message.startswith("Variable '$"):
            return "BAD_USER_INPUT"  # a resolver's ValueError, or variables of the wrong shape
        return "GRAPHQL_VALIDATION_FAILED"

    def masked(self, error: GraphQLError, context: object) -> GraphQLError:
        """A fault as the client sees it: no message of ours, the request id to quote to operators; a
        database that could not serve it in time is said so (UNAVAILABLE: retry)."""
        busy = database_unavailable(error.original_error)
        extensions: dict[str, Any] = {"code": UNAVAILABLE if busy else INTERNAL}
        rid = request_id_of(context)
        if rid is not None:
            extensions["requestId"] = rid
        return GraphQLError(
            UNAVAILABLE_MESSAGE if busy else MASKED_MESSAGE,
            error.nodes,
            error.source,
            error.positions,
            error.path,
            extensions=extensions,
        )

    def for_client(self, error: GraphQLError, context: object) -> GraphQLError:
        """The error as sent: kept when it has its code, masked when a fault, given its code otherwise."""
        if (error.extensions or {}).get("code"):
            return error
        return self.masked(error, context) if self.is_fault(error) else self.with_code(error)

    def with_code(self, error: GraphQLError) -> GraphQLError:
        # a new error: validation errors are shared by every request through the validation cache
        return GraphQLError(
            error.message,
            error.nodes,
            error.source,
            error.positions,
            error.path,
            error.original_error,
            extensions={**(error.extensions or {}), "code": self.code(error)},
        )


def request_id_of(context: Any) -> str | None:
    rid = getattr(context, "request_id", None)
    return rid if isinstance(rid, str) else None


class ClientErrors(SchemaExtension):
    """Masks faults (keeping the request id) and gives every other error of an operation its code.

    Strawberry's MaskErrors, on its documented `on_operation` hook alone: not per streamed result,
    because StockwireSchema._guarded gives every websocket result the same codes and masking
    (`_finish`) before it is sent, and a per-result hook, run by Strawberry for each subscription
    message of each subscriber, was a tenth of the fan-out's cost (profiled).
    """

    def __init__(self, policy: ErrorPolicy) -> None:
        self.policy = policy

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)  # also a PreExecutionError's
        if errors:
            context = self.execution_context.context
            result.errors = [self.policy.for_client(e, context) for e in errors]  # type: ignore[union-attr]


class OperationLimits(SchemaExtension):
    """The token limit and the limit rules on each operation, and one operation per request.

    What MaxTokensLimiter and AddValidationRules do in their `on_operation` hooks, here in
    `on_parse` and `on_validate`, which close when parsing and validation end: an `on_operation`
    hook stays open for a subscription's lifetime. Listed before ParserCache and ValidationCache,
    which read what these set.
    """

    def __init__(self, max_tokens: int | None, rules: tuple[type[ASTValidationRule], ...]) -> None:
        self.max_tokens = max_tokens
        self.rules = rules

    def on_parse(self) -> Iterator[None]:
        if self.max_tokens is not None:
            self.execution_context.parse_options["max_tokens"] = self.max_tokens
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        context.validation_rules = context.validation_rules + self.rules
        yield
        document = context.graphql_document
        if context.pre_execution_errors or document is None or provided_operation_name(context) is not None:
            return
        count = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
        if count > 1:
            raise AmbiguousOperationError(count)


class AmbiguousOperationError(CannotGetOperationTypeError):
    """A document with several operations and no operationName: GraphQL-over-HTTP wants a request
    error, where Strawberry would run the first one."""

    def __init__(self, count: int) -> None:
        super().__init__(None)
        self.count = count

    def as_http_error_reason(self) -> str:
        return f"the document has {self.count} operations: say which one to run with operationName"


class StockwireSchema(LeanExtensionsSchema):
    """Logs faults once, with the request id and traceback; client errors only at debug level.

    (Strawberry's default logs every error with a traceback, so any client sending bad queries
    could fill the logs.)

    Errors raised while the document is parsed (syntax errors, the token limit) leave Strawberry's
    operation hook by an exception, so ClientErrors never sees them: `execute` and `stream` give
    those their code (or mask them, were one a fault) on the way out.
    """

    error_policy: ErrorPolicy
    # documents that validated, by text and operationName (app/graphql/known_documents.py); None: none kept
    known_documents: KnownDocuments | None = None

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().execute(*args, **kwargs)
        self._finish(result, kwargs.get("context_value", args[2] if len(args) > 2 else None))
        return result

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        source = await super().stream(*args, **kwargs)
        return self._guarded(source, kwargs.get("context_value", args[2] if len(args) > 2 else None))

    async def _guarded(self, source: AsyncGenerator[Any, None], context: object) -> AsyncGenerator[Any, None]:
        """The websocket transports' stream: a parse error escapes Strawberry's stream as an exception
        (the socket's task dies and the client only gets `complete`); here it becomes the operation's
        error message, with its code."""
        started = False
        try:
            async with aclosing(source):
                async for result in source:
                    started = True
                    self._finish(result, context)
                    yield result
        except GraphQLError as error:
            if started:
                raise
            rejected = PreExecutionError(data=None, errors=[error])
            self._finish(rejected, context)
            yield rejected

    def _finish(self, result: object, context: object) -> None:
        errors = getattr(result, "errors", None)
        if not isinstance(errors, list) or all((e.extensions or {}).get("code") for e in errors):
            return  # the usual case: no errors, or ClientErrors gave each its code (HTTP results)
        finished = [self.error_policy.for_client(e, context) for e in errors]
        result.errors = finished  # type: ignore[attr-defined]

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        rid = request_id_of(execution_context.context) if execution_context is not None else None
        for error in errors:
            if not self.error_policy.is_fault(error):
                log.debug("client error [request_id=%s]: %s", rid, error.message)
                continue
            where = ".".join(str(p) for p in error.path or ()) or "(operation)"
            if database_unavailable(error.original_error):
                # the database's state, not a bug: one line each (the client is told UNAVAILABLE, to retry);
                # a busy database otherwise wrote a traceback per request, burying anything else
                log.warning("database unavailable at %s [request_id=%s]: %s", where, rid, error.message)
            else:
                log.error(
                    "unexpected error at %s [request_id=%s]: %s",
                    where,
                    rid,
                    error.message,
                    exc_info=error.original_error,
                )
