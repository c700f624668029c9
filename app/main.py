"""The only place concrete things are wired: settings, database, broadcast, background tasks, routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broadcaster import Broadcast
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from app.db import statistics, tenancy
from app.db.engine import Database
from app.db.tables import outbox
from app.db.tenancy import DEFAULT_TENANT
from app.graphql import graphiql
from app.graphql.context import Context
from app.graphql.http import Problem, SecureGraphQLView, principal_of, request_id_of, tenant_of
from app.graphql.schema import build_schema
from app.observability import metrics
from app.observability.logging import configure_logging
from app.observability.middleware import ObservabilityMiddleware
from app.ops.routes import ops_routes
from app.realtime.config import RealtimeSettings
from app.realtime.hub import Hub
from app.realtime.limits import Admission, LimitExceeded, Ticket
from app.realtime.redis_backend import Backend, make_backend
from app.realtime.relay import OutboxRelay
from app.realtime.streams import Streams
from app.realtime.ws import (
    CLOSE_AS,
    TICKETS,
    PingingTransportWSHandler,
    StockwireGraphQLWSHandler,
    StockwireWebSocketAdapter,
)
from app.security.runtime import Security, make_security, require_a_key
from app.services import reservations, tenants
from app.services.channel_publication import PublicationWorker
from app.services.context import Ctx
from app.services.tenants import PerTenant
from app.settings import Settings

log = logging.getLogger("stockwire")


@dataclass
class Runtime:
    """Everything the lifespan creates; request handlers read it."""

    settings: Settings
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    ctx: Ctx | None = None
    broadcast: Broadcast | None = None
    backend: Backend | None = None  # the one `broadcast` was built with (broadcaster does not expose it)
    hub: Hub | None = None
    relay: OutboxRelay | None = None
    streams: Streams | None = None
    security: Security | None = None
    publication: PerTenant[PublicationWorker] | None = None
    admission: Admission = field(init=False)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    outbox_rows: int = 0  # sampled by _sample_outbox for /metrics
    outbox_oldest: datetime | None = None

    def __post_init__(self) -> None:
        self.admission = Admission(self.realtime)  # websocket caps, counted per process

    def broadcast_state(self) -> str:
        """ "ok", or "degraded: <why>" while changes cannot be pushed (queries and reserves still work)."""
        backend = self.backend
        if backend is not None and not backend.listener_alive:
            return f"degraded: {backend.last_error or 'listener not running'}"
        if self.hub is None or not self.hub.alive:
            return "degraded: change subscription not running"
        return "ok"

    def gauges(self) -> list[tuple[str, str, dict[str, str], float]]:
        """State for /metrics, read at scrape time (app/observability/metrics.py)."""
        out: list[tuple[str, str, dict[str, str], float]] = []
        if self.ctx is None:
            return out
        pool: Any = self.ctx.db.engine.sync_engine.pool
        if hasattr(pool, "checkedout"):
            out += [
                ("stockwire_db_pool_checked_out", "Database connections in use", {}, float(pool.checkedout())),
                ("stockwire_db_pool_size", "Database pool size (steady connections)", {}, float(pool.size())),
                ("stockwire_db_pool_overflow", "Connections opened beyond the pool size", {}, float(pool.overflow())),
            ]
        up = 1.0 if self.broadcast_state() == "ok" else 0.0
        out.append(("stockwire_broadcast_up", "1: changes are pushed; 0: broadcast degraded (Redis)", {}, up))
        if self.hub is not None:
            out.append(
                ("stockwire_subscribers", "Subscriptions served by this process", {}, self.hub.sizes()["mailboxes"])
            )
            out.append(
                (
                    "stockwire_messages_delivered",
                    "Change messages handed to this process's subscribers since start (a counter)",
                    {},
                    float(self.hub.delivered_total),
                )
            )
        out.append(("stockwire_outbox_rows", "Outbox rows waiting to be published", {}, float(self.outbox_rows)))
        age = 0.0 if self.outbox_oldest is None else max(0.0, (self.ctx.clock() - self.outbox_oldest).total_seconds())
        out.append(("stockwire_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", {}, age))
        if self.relay is not None:
            out.append(
                (
                    "stockwire_relay_published_changes",
                    "Changes this process's relay published since start (a counter)",
                    {},
                    float(self.relay.published_count),
                )
            )
            out.append(
                (
                    "stockwire_relay_unheard_claims",
                    "Positions and outbox rows the relay claimed unread, with nobody subscribed on memory:// "
                    "(a counter)",
                    {},
                    float(self.relay.unheard_count),
                )
            )
            out.append(
                (
                    "stockwire_relay_unheard_messages",
                    "Messages the relay did not build because no subscriber on memory:// heard their key (a counter)",
                    {},
                    float(self.relay.unheard_messages),
                )
            )
            failing = 1.0 if self.relay.last_error else 0.0
            out.append(("stockwire_relay_failing", "1 while the outbox relay's last attempt failed", {}, failing))
        for tenant_id, worker in (self.publication.workers if self.publication else {}).items():
            # channel codes are per tenant: the default tenant's keep their plain label
            prefix = "" if tenant_id == DEFAULT_TENANT else f"{tenant_id}:"
            for code, leads in worker.leadership().items():
                out.append(
                    (
                        "stockwire_publication_leader",
                        "1 where this process is the channel's elected publisher",
                        {"channel": prefix + code},
                        1.0 if leads else 0.0,
                    )
                )
            for code, lag in worker.lag_seconds().items():
                out.append(
                    (
                        "stockwire_publication_lag_seconds",
                        "How long the channel's endpoint has been behind (0: in sync); leader only",
                        {"channel": prefix + code},
                        lag,
                    )
                )
        return out


class StockwireGraphQL(SecureGraphQLView):
    # also pings graphql-transport-ws clients (Strawberry only does "ka" on the legacy protocol);
    # both handlers and the adapter enforce the websocket limits (app/realtime/ws.py)
    graphql_transport_ws_handler_class = PingingTransportWSHandler
    graphql_ws_handler_class = StockwireGraphQLWSHandler
    websocket_adapter_class = StockwireWebSocketAdapter  # type: ignore[assignment]

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(
            build_schema(runtime.settings),  # the query limits come from the settings
            graphql_ide="graphiql",
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
            keep_alive=True,
            keep_alive_interval=runtime.realtime.keepalive_seconds,
            max_subscriptions_per_connection=runtime.realtime.max_subscriptions_per_connection,
        )
        self.runtime = runtime
        self.configure_security(runtime.settings)
        graphiql.page()  # a page loading a file from elsewhere fails the start, not a browser offline
        self.max_request_bytes = runtime.settings.max_request_bytes  # a websocket message's cap
        self.admission = runtime.admission

    @property
    def graphql_ide_html(self) -> str:
        return graphiql.page()  # Strawberry's, loading its scripts from here rather than unpkg.com

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        client = scope.get("client")
        try:
            held = [self.admission.connection(client[0] if client else "unknown")]
        except LimitExceeded as refused:
            await self._refuse(WebSocket(scope, receive, send), refused)
            return
        scope[TICKETS] = held
        try:
            await super().__call__(scope, receive, send)
        finally:
            for ticket in held:  # the per-key ticket joins this list at connection_init
                ticket.release()

    async def _refuse(self, websocket: WebSocket, refused: LimitExceeded) -> None:
        # accepted to be closed: a close code and reason say why; a refused handshake could only say 403
        offered = websocket.scope.get("subprotocols") or []
        chosen = next((p for p in offered if p in (GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL)), None)
        await websocket.accept(subprotocol=chosen)
        await websocket.close(code=4429, reason=f"{refused.code}: {refused.setting}")

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        try:
            return await super().run(request, context, root_value)
        except ClientDisconnect:
            # the body never came whole (the client hung up, or missed the body deadline of
            # app/serving.py and was cut off): nobody reads the answer, and it is no fault of ours
            raise Problem(400, "BAD_REQUEST", "the connection closed before the request body was complete") from None

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        answer = await super().on_ws_connect(context)  # authenticates (or refuses) the key
        scope = context.request.scope
        assert context.principal is not None
        try:
            ticket = self.admission.connection_of_key(context.principal.key_id, context.tenant_id)
        except LimitExceeded as refused:
            scope[CLOSE_AS] = (4429, f"{refused.code}: {refused.setting}")
            raise ConnectionRejectionError({"message": str(refused), "code": refused.code}) from None
        held: list[Ticket] = scope.setdefault(TICKETS, [])
        held.append(ticket)
        return answer

    def security_runtime(self) -> Security | None:
        return self.runtime.security

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket | None) -> Context:
        assert self.runtime.ctx is not None, "the lifespan has not started"
        return Context(
            ctx=self.runtime.ctx,
            request=request,
            response=response,
            realtime=self.runtime.streams,
            principal=principal_of(request),  # HTTP: authenticated at the edge; websockets: at connection_init
            tenant_id=tenant_of(request),
            security=self.runtime.security,
            request_id=request_id_of(request),
        )


async def _sweep_expired(ctx: Ctx) -> None:
    """Releases holds past expiry within about a second, even for SKUs nobody touches."""
    while True:
        try:
            for tenant in await tenants.list_tenants(ctx.db):  # each tenant's holds, as that tenant
                with tenancy.acting_for(tenant.id):
                    while expired := await reservations.sweep_expired(ctx):
                        metrics.SWEEPER_EXPIRED.inc(expired)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.SWEEPER_FAILURES.inc()
            log.exception("expiry sweeper failed; retrying")
        await asyncio.sleep(ctx.settings.expiry_sweep_seconds)


async def _analyse_new_tables(ctx: Ctx, every: float = 5.0) -> None:
    """Statistics for tables autovacuum has not analysed yet (app/db/statistics.py says why)."""
    while True:
        try:
            analysed = await statistics.analyse_new_tables(ctx.db)
            if analysed:
                log.info("analysed tables without statistics: %s", ", ".join(analysed))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("analysing new tables failed: %s", exc)
        await asyncio.sleep(every)


async def _sample_outbox(runtime: Runtime, every: float = 5.0) -> None:
    """How much is waiting in the outbox and for how long: a scrape cannot query the database itself."""
    assert runtime.ctx is not None
    while True:
        try:
            with tenancy.system():  # every tenant's rows
                async with runtime.ctx.db.read() as conn:
                    row = (await conn.execute(select(func.count(), func.min(outbox.c.created_at)))).one()
            runtime.outbox_rows, runtime.outbox_oldest = int(row[0]), row[1]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("outbox sample failed: %s", exc)
        await asyncio.sleep(every)


def _tune_gc(threshold: int) -> None:
    """Keep the cyclic garbage collector from pausing pushes for tens to hundreds of milliseconds.

    Measured under the push benchmark (200 changes/s, 1,000 subscribers): full (generation 2)
    collections of 70-280 ms, which were the push latency's p99. Everything alive once the service
    has started (modules, the schema, caches) is frozen out of future collections, and the youngest
    generation is collected less often; memory is freed by reference counting as before, only
    reference cycles wait longer.
    """
    if threshold <= 0:
        return  # STOCKWIRE_GC_THRESHOLD=0: Python's defaults
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 50, 100)


class StockwireApp(Starlette):
    """Starlette, with the websockets of /graphql sent straight to the GraphQL view behind the
    observability middleware (their request id, access line and metrics).

    A subscriber's connection stays suspended inside every layer it passed for as long as it is open.
    Starlette's other layers do nothing for it: the error middleware and CORS pass websockets on, the
    exception middleware only turns Starlette's HTTP/WebSocket exceptions (the view raises none) into a
    close, and the router matches the one path. Their six to eight coroutine frames and closures were
    about 2.7 KB of each idle subscriber's live memory (push.py --memory-only --profile tracemalloc, at
    2,000), a tenth of it (issue 15: <= 30 KB). Every other request goes the whole way."""

    def __init__(self, websockets: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._websockets = websockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # behind a root_path (a prefix a proxy strips), the router's own matching decides, as before
        if scope["type"] == "websocket" and scope["path"] == "/graphql" and not scope.get("root_path"):
            scope["app"] = self  # as Starlette sets it (WebSocket.app)
            await self._websockets(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    runtime = Runtime(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        s = runtime.settings
        configure_logging()  # here, not at import: uvicorn configures its loggers before the lifespan
        db = Database(s.database, s.db_pool_size, s.db_max_overflow, pool_timeout=s.db_pool_timeout_seconds)
        try:
            # `development_key` (set for the embedded default by app/db/embedded.py) makes and prints a key
            # with every scope when there is none; a deployment refuses to start instead
            await require_a_key(db, development=s.development_key)
            await db.warm(s.db_pool_warm)
        except Exception:
            await db.dispose()
            raise
        ctx = Ctx(db=db, settings=s)
        runtime.security = make_security(db, s)
        # Redis down at start is not fatal: queries and reserves work, push resumes when it answers
        backend = make_backend(s.broadcast_url, start_while_down=True)
        broadcast = Broadcast(backend=backend)
        await broadcast.connect()
        hub = Hub(broadcast, channel=runtime.realtime.broadcast_channel, backend=backend)
        await hub.start()
        relay = OutboxRelay(ctx, hub)
        db.on_commit(relay.poke)
        runtime.ctx, runtime.broadcast, runtime.hub, runtime.relay = ctx, broadcast, hub, relay
        runtime.backend = backend
        runtime.streams = Streams(ctx, hub, runtime.realtime)
        runtime.tasks = [asyncio.create_task(relay.run()), asyncio.create_task(_sweep_expired(ctx))]
        # pushes changed channel availability to channel endpoints (the channels issue)
        # follows the relay's channel changes: one worker per tenant, each acting for its tenant
        runtime.publication = PerTenant(db, lambda: PublicationWorker(ctx, hub), lambda worker: worker.run())
        runtime.tasks.append(asyncio.create_task(runtime.publication.run()))
        runtime.tasks.append(asyncio.create_task(_sample_outbox(runtime)))
        runtime.tasks.append(asyncio.create_task(_analyse_new_tables(ctx)))
        metrics.watch(runtime)
        _tune_gc(s.gc_threshold)
        try:
            yield
        finally:
            metrics.unwatch(runtime)
            for task in runtime.tasks:
                task.cancel()
            await asyncio.gather(*runtime.tasks, return_exceptions=True)
            await hub.stop()
            await broadcast.disconnect()
            await db.dispose()

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        """200 while this process can serve queries and reserves (the database answers); 503 only when
        it cannot. A broadcast outage (Redis) only stops push: it is reported as degraded, in the body
        and in stockwire_broadcast_up, and must not take the fleet out of a load balancer."""
        checks: dict[str, str] = {}
        if runtime.ctx is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.wait_for(runtime.ctx.db.ping(), timeout=2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"down: {type(exc).__name__}"
        state = runtime.broadcast_state()
        checks["broadcast"] = "ok" if state == "ok" else "degraded"
        body: dict[str, Any] = {"checks": checks}
        if state != "ok":
            body["broadcastError"] = state.removeprefix("degraded: ")
        if runtime.relay is not None and runtime.relay.last_error:
            checks["outbox_relay"] = f"failing: {runtime.relay.last_error}"
        ready = checks["database"] == "ok"
        body["status"] = ("ready" if state == "ok" else "degraded") if ready else "not ready"
        body["broadcast"] = "ok" if state == "ok" else "degraded"
        return JSONResponse(body, status_code=200 if ready else 503)

    graphql_app = StockwireGraphQL(runtime)
    app = StockwireApp(
        ObservabilityMiddleware(graphql_app),
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics.metrics_endpoint),
            Route("/graphql", graphql_app, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql_app),
            *ops_routes(),  # the operations console (app/ops)
            *graphiql.graphiql_routes(),  # GraphiQL's scripts and styles, served from here
        ],
        lifespan=lifespan,
        # browser storefronts on the listed origins may call the API over HTTP too (the same list
        # admits their websockets); with no list, only same-origin pages and non-browser clients
        middleware=[
            Middleware(ObservabilityMiddleware),  # outermost: request id, access line, HTTP metrics
            Middleware(
                CORSMiddleware,
                allow_origins=runtime.settings.allowed_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Id"],
                expose_headers=["X-Request-Id"],
                max_age=600,
            ),
        ]
        if runtime.settings.allowed_origins
        else [Middleware(ObservabilityMiddleware)],
    )
    app.state.runtime = runtime
    return app
