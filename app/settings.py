"""Settings from the environment (prefix STOCKWIRE_), validated once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKWIRE_", extra="ignore")

    # unset: `stockwire` starts an embedded PostgreSQL in data_dir (pip install 'stockwire[embedded]')
    database_url: str | None = None
    data_dir: Path = Path(".stockwire")
    # make and print a key with every scope at start when the database has none (app/security/runtime.py):
    # what the embedded default does (set for it by `stockwire`); a deployment must refuse to start instead
    development_key: bool = False
    broadcast_url: str = "memory://"
    # reservations
    default_ttl_seconds: int = Field(900, ge=1)
    max_ttl_seconds: int = Field(3600, ge=1)
    max_units_per_reservation: int = Field(1000, ge=1)
    max_batch_size: int = Field(1000, ge=1)
    # the most one-line checkouts held together in one transaction (a flash sale's hot SKU, a spread
    # load's group commit: app/services/reservations/combining.py); 0: every reserve in its own
    combine_holds: int = Field(64, ge=0)
    # batches in flight at once: 2 lets the next one claim its keys (and lock other positions) while the
    # previous one holds its row locks; 1: one at a time (bench/README.md, Combining: 2 was faster than 1
    # in both scenarios once batches spanned positions; 3 and 4 no faster than 2)
    combine_in_flight: int = Field(2, ge=1, le=8)
    # how often the sweeper releases expired holds; the contract wants them gone within ~1 s
    expiry_sweep_seconds: float = Field(0.25, gt=0)
    # how often the outbox relay looks for changes left by other (or crashed) processes
    relay_poll_seconds: float = Field(0.5, gt=0)
    # sales velocity (issue 18, app/domain/demand.py): a sale's weight halves every this many seconds
    velocity_half_life_seconds: float = Field(3600.0, gt=0)
    # objects allocated between collections of the youngest GC generation (app/main.py _tune_gc);
    # 0 keeps Python's defaults (700) and does not freeze the start-up heap
    gc_threshold: int = Field(10_000, ge=0)
    # connections kept open per process; SQLAlchemy closes an overflow connection as soon as it is
    # returned, so a steady load above the pool size reconnects all the time (a backend fork and every
    # statement prepared again: at 16 concurrent reserves, 15 new connections a second, bench/reserve.py)
    db_pool_size: int = Field(20, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    # how long a request waits for a connection when all are in use; then it is answered UNAVAILABLE
    # (retry shortly), not left hanging (app/graphql/errors.py)
    db_pool_timeout_seconds: float = Field(30.0, gt=0)
    # connections opened at start (at most db_pool_size): otherwise the pool grows during the first
    # bursts, and a new connection is slow to its first answers (Database.warm)
    db_pool_warm: int = Field(20, ge=0)
    # security: API keys, request limits, rate limits (README.md, section Security, has the reasoning for each default)
    auth_cache_seconds: float = Field(5.0, ge=0)  # a key revoked elsewhere stops working within this
    # the most bytes of one request on either transport: an HTTP body or a websocket message
    # (app/graphql/limits.py max_request_bytes is what both read; README Limits)
    max_request_bytes: int = Field(1_048_576, ge=1024)
    # a request's head must be complete this long after the connection opened (or the previous
    # response ended), and its body within this long after the head: slow-sending clients are closed
    # (served by `stockwire serve`; app/serving.py)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)
    # rows one query or mutation may make resolvers read (app/graphql/limits.py says how they are counted)
    max_query_cost: int = Field(25_000, ge=0)  # 0: no limit
    query_cost_list_size: int = Field(20, ge=1)  # what a list of unknown length counts as
    # a request refused as too costly again within the window of the previous refusal from its key or
    # its address is answered only after this many seconds (0: at once); README Limits
    cost_penalty_seconds: float = Field(1.0, ge=0, le=30)
    cost_penalty_window_seconds: float = Field(60.0, gt=0)
    max_response_bytes: int = Field(8 * 1_048_576, ge=1024)  # a query's encoded answer
    max_query_depth: int = Field(10, ge=1)
    max_query_tokens: int = Field(2000, ge=50)
    max_aliases: int = Field(20, ge=0)
    # list items in one root field's arguments, all lists counted: bounds the SQL `IN (...)` lists a call
    # can cause (PostgreSQL takes at most 32767 parameters per statement) and the work behind them
    max_input_items: int = Field(10_000, ge=1, le=30_000)
    # browser pages on these origins may open websockets (same-origin and non-browser clients always may)
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ws_init_timeout_seconds: float = Field(10.0, gt=0)  # connection_init must arrive within this
    hold_rate_limit: int = Field(2000, ge=0)  # reserve/routeAndReserve calls per key per window; 0: unlimited
    hold_rate_window_seconds: float = Field(10.0, gt=0)
    # the same calls per tenant (all its keys together) per window; 0: unlimited (README Tenants)
    tenant_hold_rate_limit: int = Field(10_000, ge=0)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # STOCKWIRE_ALLOWED_ORIGINS=https://shop.example.com,https://admin.example.com
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def database(self) -> str:
        """The database URL, for code that runs after `stockwire` (app/db/embedded.py) settled on one."""
        if self.database_url is None:
            raise RuntimeError(
                "no database: set STOCKWIRE_DATABASE_URL, or start the service with `stockwire serve`, "
                "which starts the embedded PostgreSQL itself"
            )
        return self.database_url

    # trusted documents (app/graphql/persisted.py): the manifest of the clients' operations, sent by hash;
    # empty: clients/operations/manifest.json of this checkout when it exists
    persisted_documents: str = ""
    # keys whose only scope is storefront (public, in browsers) may run only those documents
    storefront_trusted_documents_only: bool = False
