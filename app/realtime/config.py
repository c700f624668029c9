"""Settings of the real-time layer (environment prefix STOCKWIRE_, like app.settings)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RealtimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKWIRE_", extra="ignore")

    # The pub/sub channel every process of one deployment shares; give each deployment (and each
    # test) its own when several share one Redis, or they would hear each other's SKUs.
    broadcast_channel: str = Field("stockwire.changes", min_length=1, max_length=200)
    # Concurrent operations on one websocket (Strawberry enforces it on both protocols).
    max_subscriptions_per_connection: int = Field(100, ge=1)
    # How many SKU or location codes one subscription may name (each costs a snapshot read).
    max_codes_per_subscription: int = Field(1000, ge=1)
    # Per process (README Limits): a storefront key is public and shared by every shopper's browser,
    # so per key the caps are wide and only stop a runaway; per client address they are tight.
    max_connections_per_address: int = Field(100, ge=1)
    max_connections_per_key: int = Field(20_000, ge=1)
    max_subscriptions_per_address: int = Field(1000, ge=1)
    max_subscriptions_per_key: int = Field(100_000, ge=1)
    # per tenant (all its keys together, per process): one brand cannot take a process's every socket
    max_connections_per_tenant: int = Field(50_000, ge=1)
    max_subscriptions_per_tenant: int = Field(250_000, ge=1)
    # Server keepalive: graphql-ws "ka" and graphql-transport-ws "ping" this often, in seconds.
    keepalive_seconds: float = Field(15.0, gt=0)
