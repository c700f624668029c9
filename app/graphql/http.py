"""GraphQL over HTTP as the specification has it, plus the edge of the security layer.

Strawberry's ASGI view answers every request with `application/json` and status 200 or a plain-text
400. This view follows the GraphQL-over-HTTP specification:

* `Accept` is negotiated: `application/graphql-response+json` (also when Accept is absent, as the
  spec says from 2025 on) gets real status codes: 400 for a request that cannot be parsed or does
  not validate (limits included), 500 for a fault before execution, 200 once execution started;
  `application/json` (also `*/*`) keeps the legacy rule, 200 for every well-formed request.
  Nothing acceptable: 406.
* Malformed requests are 4xx whatever the media type: 400 bad JSON or non-UTF-8, 413 body over
  `max_body_bytes`, 415 a content type other than JSON, 405 (with `Allow: POST`) a mutation or
  subscription sent with GET, 400 a subscription sent with POST (websockets only), 401 (with
  `WWW-Authenticate`) a missing, unknown or revoked key.
  Their bodies are GraphQL responses too: `{"errors": [{"message", "extensions": {"code"}}]}`.
* Every response carries `X-Request-Id`; masked faults carry it in `extensions.requestId`.

Websockets: the key comes in the `connection_init` payload (`{"authorization": "Bearer <key>"}`,
or the handshake's Authorization header); a bad one is refused (graphql-transport-ws: close 4403).
A key revoked while a socket is open closes it within `auth_cache_seconds`.

The parts live by job: app/graphql/http_body.py (Accept negotiation, Problem, the body checks),
app/graphql/request_state.py (request id, key and tenant recorded on a request),
app/graphql/http_view.py (the view: authentication, tenant, execution, the answer's cap),
app/graphql/ws_auth.py (a websocket's key and tenant, the revocation watch). Every name stays
importable from here.
"""

from __future__ import annotations

from app.graphql.http_body import GRAPHQL_RESPONSE, JSON, BadBody, Problem, negotiate
from app.graphql.http_view import SecureGraphQLView
from app.graphql.request_state import _REQUEST_ID, principal_of, request_id_of, tenant_of

__all__ = [
    "GRAPHQL_RESPONSE",
    "JSON",
    "_REQUEST_ID",
    "BadBody",
    "Problem",
    "SecureGraphQLView",
    "negotiate",
    "principal_of",
    "request_id_of",
    "tenant_of",
]
