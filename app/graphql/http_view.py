"""The GraphQL view at the edge: negotiates the answer's media type, authenticates the key and
resolves the tenant (HTTP per request, websockets at connection_init), bounds the body, refuses
what the GraphQL-over-HTTP specification refuses, caps the answer's size, and closes a websocket
whose key is revoked. The protocol it follows is described in app/graphql/http.py."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeGuard, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException, StarletteRequestAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData, process_result
from strawberry.http.websocket_origin import normalize_allowed_origins
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from app.db import tenancy
from app.graphql.context import Context
from app.graphql.errors import INTERNAL, StockwireSchema
from app.graphql.http_body import (
    GRAPHQL_RESPONSE,
    JSON,
    BadBody,
    Problem,
    _BodyTooLarge,
    _json_kind,
    _limit_body,
    _unstorable,
    negotiate,
)
from app.graphql.known_documents import KnownDocument, execute_known
from app.graphql.limits import RESPONSE_TOO_LARGE, max_request_bytes, wait_penalty
from app.graphql.persisted import Refused, TrustedDocuments, socket_caller
from app.graphql.request_state import _request_id, principal_of
from app.graphql.ws_auth import RevocationWatch, _ws_tenant, _ws_token
from app.security.auth import bearer_token
from app.security.runtime import Security
from app.security.tenants import HEADER as TENANT_HEADER
from app.security.tenants import TenantRefused
from app.settings import Settings

log = logging.getLogger("stockwire.http")

# the media type chosen for the request being answered (set per request in __call__)
_MEDIA: ContextVar[str] = ContextVar("stockwire_media_type", default=JSON)
# the most bytes the answer being built may have (set once a query has executed; None: no cap)
_ANSWER_CAP: ContextVar[int | None] = ContextVar("stockwire_answer_cap", default=None)


class SecureGraphQLView(GraphQL[Context, None]):
    """Subclasses provide `security_runtime()` and call `configure_security(settings)` once."""

    max_body_bytes = 1_048_576
    trusted_documents = TrustedDocuments()
    max_response_bytes = 8 * 1_048_576
    revocation_watch = RevocationWatch()  # configure_security gives each view its own

    def security_runtime(self) -> Security | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def configure_security(self, settings: Settings) -> None:
        self.max_body_bytes = max_request_bytes(settings)  # the websocket handler reads the same limit
        self.max_response_bytes = settings.max_response_bytes
        # pitfalls.md #10: a page on another origin may only open a websocket if listed here
        self.allowed_origins = normalize_allowed_origins(settings.allowed_origins)
        self.connection_init_wait_timeout = timedelta(seconds=settings.ws_init_timeout_seconds)
        self.allow_queries_via_get = True  # queries only: mutations over GET are 405
        self.trusted_documents = TrustedDocuments.from_settings(settings)
        self.revocation_watch = RevocationWatch()  # one task for every socket of this view

    # --- HTTP -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        rid = _request_id(request.headers)
        request.state.request_id = rid
        media = negotiate(request.headers.get("accept"))
        try:
            response = await self._answer(request, scope, receive, media)
        except Problem as p:
            response = self._problem_response(p, media, rid)
        response.headers["X-Request-Id"] = rid
        await response(scope, receive, send)

    async def _answer(self, request: Request, scope: Scope, receive: Receive, media: str | None) -> Response:
        if self.should_render_graphql_ide(StarletteRequestAdapter(request)):
            return cast(Response, await self.run(request))  # the GraphiQL page itself is public; its queries are not
        if media is None:
            raise Problem(406, "NOT_ACCEPTABLE", f"answers are {GRAPHQL_RESPONSE} or {JSON}; Accept allows neither")
        if request.method == "POST":
            self._check_body_headers(request)
        security = self.security_runtime()
        if security is None:
            raise Problem(503, "UNAVAILABLE", "the service is starting")
        try:
            principal = await security.authenticator.authenticate(bearer_token(request.headers.get("authorization")))
        except Exception as exc:
            log.exception("API key lookup failed [request_id=%s]", request.state.request_id)
            raise Problem(503, "UNAVAILABLE", "cannot check API keys right now") from exc
        if principal is None:
            message = "an API key is required: Authorization: Bearer <key>"
            if request.headers.get("authorization"):
                message = "unknown or revoked API key"
            raise Problem(401, "UNAUTHENTICATED", message, {"WWW-Authenticate": 'Bearer realm="stockwire"'})
        request.state.principal = principal
        try:
            tenant_id = await security.tenants.resolve(principal, request.headers.get(TENANT_HEADER))
        except TenantRefused as refused:
            raise Problem(refused.status, refused.code, refused.message) from None
        limited = Request(scope, _limit_body(receive, self.max_body_bytes))
        limited.state.request_id, limited.state.principal = request.state.request_id, principal
        request.state.tenant_id = limited.state.tenant_id = tenant_id
        token, cap = _MEDIA.set(media), _ANSWER_CAP.set(None)
        try:
            with tenancy.acting_for(tenant_id):  # every transaction of this request
                return cast(Response, await self.run(limited))
        except _BodyTooLarge:
            raise self._too_large() from None
        except HTTPException as exc:
            cause = exc.__cause__
            if isinstance(cause, BadBody):
                raise Problem(exc.status_code, cause.code, cause.msg) from exc
            raise Problem(exc.status_code, "BAD_REQUEST", exc.reason) from exc
        except Problem:
            raise
        except Exception as exc:
            log.exception("unexpected error [request_id=%s]", request.state.request_id)
            raise Problem(500, INTERNAL, "Unexpected error.") from exc
        finally:
            _MEDIA.reset(token)
            _ANSWER_CAP.reset(cap)

    def _check_body_headers(self, request: Request) -> None:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            raise self._too_large()
        content_type = request.headers.get("content-type", "")
        media, *params = (p.strip().lower() for p in content_type.split(";"))
        if media != JSON:
            raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", f"send the request as {JSON}")
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
                raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", "the request body must be UTF-8")

    def _too_large(self) -> Problem:
        return Problem(413, "PAYLOAD_TOO_LARGE", f"the request body is over {self.max_body_bytes} bytes")

    def _problem_response(self, p: Problem, media: str | None, rid: str) -> Response:
        extensions: dict[str, Any] = {"code": p.code}
        if p.status >= 500:
            extensions["requestId"] = rid
        body = {"errors": [{"message": p.message, "extensions": extensions}]}
        return Response(
            json.dumps(body, separators=(",", ":")),
            status_code=p.status,
            media_type=f"{media or JSON}; charset=utf-8",
            headers=p.headers,
        )

    def decode_json(self, data: str | bytes) -> object:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")  # strictly: json.loads would guess UTF-16/32 and fail with a 500
            except UnicodeDecodeError:
                raise BadBody("the request body is not valid UTF-8") from None
        try:
            decoded = json.loads(data)
            # NUL and lone surrogates can only come from \u escapes (json.loads refuses raw control
            # characters): most bodies skip the walk over every string (a refusal's largest cost)
            unstorable = _unstorable(decoded) if "\\u" in data or not data.isascii() else None
        except RecursionError:
            raise BadBody("the JSON is nested too deeply") from None
        if unstorable:
            raise BadBody(unstorable, "BAD_USER_INPUT")
        return self.trusted_documents.admit_message(decoded)  # websocket subscribes by hash

    def parse_json(self, data: str | bytes) -> Any:
        """A POST body: a GraphQL request is a JSON object (an array is a batch, refused later)."""
        decoded = super().parse_json(data)
        if not isinstance(decoded, (dict, list)):
            raise HTTPException(400, f"the request body must be a JSON object, not {_json_kind(decoded)}")
        return decoded

    def parse_query_params(self, params: Any) -> dict[str, Any]:
        # GET's `variables` and `extensions` are any JSON (Strawberry checks their type), not a body
        parsed = dict(params)
        for name in ("variables", "extensions"):
            if parsed.get(name):
                try:
                    parsed[name] = self.decode_json(parsed[name])
                except json.JSONDecodeError as e:
                    raise HTTPException(400, f"{name} is not JSON") from e
        return parsed

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        # Strawberry lets subscriptions through on both methods (for its multipart transport, which the
        # Accept negotiation here never selects): run as a plain request, one fails as an internal error.
        # Subscriptions are served over websockets only; mutations never over GET.
        method = request_adapter.method
        allowed = {OperationType.QUERY} if method == "GET" else {OperationType.QUERY, OperationType.MUTATION}
        try:
            request_data = self.trusted_documents.admit(request_data, principal_of(request))  # by hash
            query, name = request_data.query, request_data.operation_name
            known = self._known(query, name)
            result: ExecutionResult
            if known is not None and known.operation_type in allowed:
                assert isinstance(query, str) and isinstance(self.schema, StockwireSchema)  # as _known checked
                result = await execute_known(
                    self.schema,
                    known,
                    query,
                    request_data.variables,
                    context,
                    root_value,
                    name,
                    allowed,
                    request_data.extensions,
                )
            else:  # a new document (parsed, validated and remembered there), or one refused there
                result = await self.schema.execute(
                    query,
                    root_value=root_value,
                    variable_values=request_data.variables,
                    context_value=context,
                    operation_name=name,
                    allowed_operation_types=allowed,
                    operation_extensions=request_data.extensions,
                )
            await wait_penalty(result.errors)  # a repeated too-costly request (app/graphql/limits.py)
            if context.operation == "query":  # a mutation's answer is never dropped: its changes are made
                _ANSWER_CAP.set(self.max_response_bytes)
            return result
        except InvalidOperationTypeError as exc:
            if method == "GET":
                allow = {"Allow": "POST"}
                raise Problem(405, "METHOD_NOT_ALLOWED", "only queries may be sent with GET", allow) from exc
            message = "subscriptions are served over websockets (graphql-transport-ws or graphql-ws) on /graphql"
            raise Problem(400, "BAD_REQUEST", message) from exc
        except CannotGetOperationTypeError as exc:
            raise Problem(400, "BAD_REQUEST", exc.as_http_error_reason()) from exc
        except MissingQueryError as exc:
            raise Problem(400, "BAD_REQUEST", "No GraphQL query found in the request") from exc
        except Refused as exc:
            raise Problem(400, exc.code, exc.message) from exc

    def _known(self, query: str | None, operation_name: str | None) -> KnownDocument | None:
        """The request's document if it validated before (app/graphql/known_documents.py)."""
        schema = self.schema
        if not isinstance(schema, StockwireSchema) or not isinstance(query, str):
            return None
        known = schema.known_documents
        # field suggestions removed from errors, and directives (an extension Strawberry adds per request),
        # are steps of Strawberry's own path that known documents do not repeat: with either, none is known
        if known is None or not known.enabled or schema.config.disable_field_suggestions or schema.directives:
            return None
        return known.get(query, operation_name)

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        processed = process_result(result)
        # a request error (nothing executed): the response has no `data` entry at all
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            processed.pop("data", None)
        return processed

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        media = _MEDIA.get()
        status = 200
        if media == GRAPHQL_RESPONSE and isinstance(response_data, dict) and "data" not in response_data:
            errors = cast(list[dict[str, Any]], response_data.get("errors") or [])
            codes = {(e.get("extensions") or {}).get("code") for e in errors}
            status = 500 if INTERNAL in codes else 400
        body = self.encode_json(response_data)
        cap = _ANSWER_CAP.get()
        if cap is not None and len(body) > cap:
            # the cost limit bounds what is read; this bounds what one answer may pin in memory
            error = {
                "message": f"the answer is over {cap} bytes; ask for fewer codes or fields",
                "extensions": {"code": RESPONSE_TOO_LARGE, "limit": cap},
            }
            body = self.encode_json({"data": None, "errors": [error]})
        response = Response(body, status_code=status, media_type=f"{media}; charset=utf-8")
        response.headers.raw.extend(sub_response.headers.raw)
        if sub_response.background:
            response.background = sub_response.background
        if sub_response.status_code:
            response.status_code = sub_response.status_code
        return response

    # --- websockets -----------------------------------------------------------------------------

    def is_websocket_request(self, request: Request | WebSocket) -> TypeGuard[WebSocket]:
        return bool(request.scope["type"] == "websocket")

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        try:
            return await super().run(request, context, root_value)
        finally:
            if self.is_websocket_request(request):
                self.revocation_watch.forget(request)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        security = self.security_runtime()
        token = _ws_token(context)
        principal = None if security is None else await security.authenticator.authenticate(token)
        if security is None or principal is None:
            refusal: dict[str, object] = {
                "message": "missing, unknown or revoked API key",
                "code": "UNAUTHENTICATED",
            }
            raise ConnectionRejectionError(refusal)
        try:
            context.tenant_id = await security.tenants.resolve(principal, _ws_tenant(context))
        except TenantRefused as refused:
            raise ConnectionRejectionError({"message": refused.message, "code": refused.code}) from None
        context.principal = principal
        socket_caller.set(principal)  # for the trusted documents check of this socket's messages
        websocket: WebSocket = context.request
        websocket.state.principal = principal  # the key id on the socket's access line, as on HTTP's
        self.revocation_watch.watch(websocket, security, token or "")
        return cast(UnsetType, UNSET)  # a plain connection_ack
