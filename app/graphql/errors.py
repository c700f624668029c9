"""Which errors a client may read, which are faults, and what every error is called.

Faults (an exception nobody raised for the client) are masked to "Unexpected error." with
`extensions.code` INTERNAL_SERVER_ERROR and the request id, and logged once with the traceback and
that id. Everything else keeps its message and gains a stable `extensions.code`: the client caused
it and needs to know what to fix (pitfalls.md #7).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import cached_property
from typing import Any

from graphql import ASTValidationRule, GraphQLError, GraphQLSyntaxError, OperationDefinitionNode
from strawberry import Schema
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.extensions.context import StreamResultContextManager
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.exceptions import CannotGetOperationTypeError
from strawberry.types import ExecutionContext
from strawberry.types.execution import PreExecutionError, StreamExecutionResult
from strawberry.utils.await_maybe import await_maybe

log = logging.getLogger("stockwire.errors")

INTERNAL = "INTERNAL_SERVER_ERROR"
MASKED_MESSAGE = "Unexpected error."

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
        """A fault as the client sees it: no message of ours, the request id to quote to operators."""
        extensions: dict[str, Any] = {"code": INTERNAL}
        rid = request_id_of(context)
        if rid is not None:
            extensions["requestId"] = rid
        return GraphQLError(
            MASKED_MESSAGE, error.nodes, error.source, error.positions, error.path, extensions=extensions
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


class ClientErrors(MaskErrors):
    """MaskErrors that leaves the request id in a masked error and a code in every other one."""

    # Not per streamed result: StockwireSchema._guarded gives every websocket result the same codes
    # and masking (`_finish`) before it is sent, and this hook, run by Strawberry for each
    # subscription message of each subscriber, was a tenth of the fan-out's cost (profiled).
    on_stream_result = SchemaExtension.on_stream_result  # type: ignore[assignment]

    def __init__(self, policy: ErrorPolicy) -> None:
        super().__init__(should_mask_error=policy.is_fault, error_message=MASKED_MESSAGE)
        self.policy = policy

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        return self.policy.masked(error, self.execution_context.context)

    def _process_result(self, result: object) -> None:
        # MaskErrors checks `isinstance(result, <runtime Protocol>)`, which costs more than the rest of
        # its work for every subscription message; the attribute itself is all that check looks at
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed = super()._process_errors(errors)
        return [e if (e.extensions or {}).get("code") else self.policy.with_code(e) for e in processed]


class _LeanRunner(SchemaExtensionsRunner):
    """Strawberry's runner, asking only the extensions that implement a hook.

    Strawberry builds a context over every extension for each streamed result and asks every one
    for results, hooks or not: for a subscription message that cost about as much as executing it
    (profiled under the fan-out benchmark). Which extensions implement `on_stream_result` and
    `get_results` is decided by their class, so it is looked up once per operation.
    """

    @cached_property
    def _streaming(self) -> list[SchemaExtension]:
        return [e for e in self.extensions if type(e).on_stream_result is not SchemaExtension.on_stream_result]

    @cached_property
    def _reporting(self) -> list[SchemaExtension]:
        return [e for e in self.extensions if type(e).get_results is not SchemaExtension.get_results]

    def on_stream_result(self, result: StreamExecutionResult) -> StreamResultContextManager:
        return StreamResultContextManager(self._streaming, result)

    async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for extension in self._reporting:
            data.update(await await_maybe(extension.get_results()))
        data.update(ctx.extensions_results)
        return data


class AmbiguousOperationError(CannotGetOperationTypeError):
    """A document with several operations and no operationName: GraphQL-over-HTTP wants a request
    error, where Strawberry would run the first one."""

    def __init__(self, count: int) -> None:
        super().__init__(None)
        self.count = count

    def as_http_error_reason(self) -> str:
        return f"the document has {self.count} operations: say which one to run with operationName"


class StockwireSchema(Schema):
    """Logs faults once, with the request id and traceback; client errors only at debug level.

    (Strawberry's default logs every error with a traceback, so any client sending bad queries
    could fill the logs.)

    Errors raised while the document is parsed (syntax errors, the token limit) leave Strawberry's
    operation hook by an exception, so ClientErrors never sees them: `execute` and `stream` give
    those their code (or mask them, were one a fault) on the way out.
    """

    error_policy: ErrorPolicy
    max_query_tokens: int | None = None
    extra_validation_rules: tuple[type[ASTValidationRule], ...] = ()

    def _create_execution_context(self, *args: Any, **kwargs: Any) -> ExecutionContext:
        # what MaxTokensLimiter and AddValidationRules would do in their on_operation hooks
        context = super()._create_execution_context(*args, **kwargs)
        if self.max_query_tokens is not None:
            context.parse_options["max_tokens"] = self.max_query_tokens
        context.validation_rules = context.validation_rules + self.extra_validation_rules
        return context

    async def _prepare_operation_async(
        self, context: ExecutionContext, extensions_runner: SchemaExtensionsRunner
    ) -> PreExecutionError | None:
        rejected = await super()._prepare_operation_async(context, extensions_runner)
        document = context.graphql_document
        if rejected is None and document is not None and context._provided_operation_name is None:
            count = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
            if count > 1:
                raise AmbiguousOperationError(count)
        return rejected

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return _LeanRunner(execution_context=execution_context, extensions=extensions)

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
            if self.error_policy.is_fault(error):
                log.error(
                    "unexpected error at %s [request_id=%s]: %s",
                    ".".join(str(p) for p in error.path or ()) or "(operation)",
                    rid,
                    error.message,
                    exc_info=error.original_error,
                )
            else:
                log.debug("client error [request_id=%s]: %s", rid, error.message)
