"""API keys over GraphQL (admin scope): list, create, revoke, and who did which (the audit).
The CLI does the same (`stockwire keys`)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from app.graphql.context import Context
from app.graphql.permissions import actor_of
from app.graphql.types import UserError
from app.security import keys
from app.security.scopes import Scope

Info = strawberry.Info[Context, None]
# registered under its GraphQL name; the Python type stays app.security.scopes.Scope
strawberry.enum(Scope, name="ApiScope", description="What an API key may do (the README's Security section)")


@strawberry.type(description="An API key; its secret is shown once, when it is created, and never stored")
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="The public start of the key (sw_<prefix>_...), to recognise it")
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = strawberry.field(description="To within a minute")

    @classmethod
    def of(cls, v: keys.ApiKeyView) -> ApiKey:
        return cls(
            id=strawberry.ID(v.id),
            name=v.name,
            prefix=v.prefix,
            scopes=sorted(v.scopes, key=lambda s: s.value),
            created_at=v.created_at,
            revoked_at=v.revoked_at,
            last_used_at=v.last_used_at,
        )


@strawberry.enum(description="What was done to a key")
class ApiKeyAction(Enum):
    CREATED = keys.CREATED
    REVOKED = keys.REVOKED


@strawberry.type(description="One audited change of an API key, and who made it")
class ApiKeyEvent:
    key_id: strawberry.ID
    key_prefix: str
    key_name: str
    action: ApiKeyAction
    actor_key_id: str | None = strawberry.field(description="The admin key that did it; null: the command line")
    actor_prefix: str | None
    at: datetime

    @classmethod
    def of(cls, v: keys.KeyEventView) -> ApiKeyEvent:
        return cls(
            key_id=strawberry.ID(v.key_id),
            key_prefix=v.key_prefix,
            key_name=v.key_name,
            action=ApiKeyAction(v.action),
            actor_key_id=v.actor_key_id,
            actor_prefix=v.actor_prefix,
            at=v.at,
        )


@strawberry.input
class CreateApiKeyInput:
    name: str
    scopes: list[Scope]


@strawberry.type
class CreateApiKeyPayload:
    api_key: ApiKey | None
    secret: str | None = strawberry.field(description="The key to send as `Authorization: Bearer <secret>`")
    user_errors: list[UserError]


@strawberry.type
class RevokeApiKeyPayload:
    api_key: ApiKey | None
    user_errors: list[UserError]


def _forget(info: Info) -> None:
    # this process stops accepting a revoked key at once; others within auth_cache_seconds
    security = info.context.security
    if security is not None:
        security.authenticator.forget_all()


@strawberry.type
class KeyQuery:
    @strawberry.field(description="API keys, oldest first")
    async def api_keys(self, info: Info, include_revoked: bool = False) -> list[ApiKey]:
        return [ApiKey.of(v) for v in await keys.list_keys(info.context.ctx.db, include_revoked)]

    @strawberry.field(description="Who created and revoked keys, oldest first (of one key, by id or prefix)")
    async def api_key_events(self, info: Info, key_id: strawberry.ID | None = None) -> list[ApiKeyEvent]:
        found = await keys.key_events(info.context.ctx.db, None if key_id is None else str(key_id))
        return [ApiKeyEvent.of(v) for v in found]


@strawberry.type
class KeyMutation:
    @strawberry.mutation(description="Create an API key with these scopes; its secret is in this answer only")
    async def create_api_key(self, info: Info, input: CreateApiKeyInput) -> CreateApiKeyPayload:
        try:
            created = await keys.create_key(
                info.context.ctx.db, input.name, input.scopes, actor_key_id=actor_of(info).key_id
            )
        except keys.KeyInputError as exc:
            error = UserError(code="INVALID_INPUT", message=str(exc), field=["input"])
            return CreateApiKeyPayload(api_key=None, secret=None, user_errors=[error])
        _forget(info)
        return CreateApiKeyPayload(api_key=ApiKey.of(created.key), secret=created.secret, user_errors=[])

    @strawberry.mutation(description="Revoke a key (by id or prefix); revoking a revoked key changes nothing")
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> RevokeApiKeyPayload:
        revoked = await keys.revoke_key(info.context.ctx.db, str(id), actor_key_id=actor_of(info).key_id)
        if revoked is None:
            error = UserError(code="API_KEY_NOT_FOUND", message=f"no API key {str(id)!r}", field=["id"])
            return RevokeApiKeyPayload(api_key=None, user_errors=[error])
        _forget(info)
        return RevokeApiKeyPayload(api_key=ApiKey.of(revoked), user_errors=[])
