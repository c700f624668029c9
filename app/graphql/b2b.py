"""B2B in GraphQL (issue 19): sell units, accounts and the keys serving them; the account, unit and
partial-hold parts of availability, availabilityChanged and reserve. Thin: parse, call services, map."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import replace
from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError

from app.domain.errors import Refused
from app.domain.reservations import RequestedLine
from app.domain.units import BASE_UNIT, in_unit
from app.graphql.context import Context
from app.graphql.permissions import acting, actor_of
from app.graphql.types import Availability, ReserveLineOutcome, UserError
from app.realtime import codec
from app.realtime.hub import ResyncNeeded
from app.realtime.limits import check_codes
from app.services import accounts, channels, units
from app.services.context import Ctx
from app.services.views import AvailabilityView, ReservationView

Info = strawberry.Info[Context, None]


def _errors(refused: Refused) -> list[UserError]:
    return [UserError.of(e) for e in refused.errors]


def _query_error(refused: Refused) -> GraphQLError:
    """A query has no userErrors: its refusal is a GraphQL error carrying the same stable code."""
    first = refused.errors[0]
    return GraphQLError(first.message, extensions={"code": first.code.value})


# --- which account a call is for -------------------------------------------------------------------


async def account_scope(info: Info, channel_code: str | None, account_code: str | None) -> accounts.Scope:
    """The channel and account of this call for the caller's key; FORBIDDEN for an account it does not
    serve, UNKNOWN_ACCOUNT / UNKNOWN_CHANNEL as GraphQL errors."""
    try:
        return await accounts.scope_for(info.context.ctx, actor_of(info).key_id, channel_code, account_code)
    except accounts.NotServed as exc:
        raise GraphQLError(str(exc), extensions={"code": "FORBIDDEN"}) from None
    except Refused as r:
        raise _query_error(r) from None


async def availability(
    info: Info, sku_codes: list[str], channel_code: str | None, account_code: str | None, unit: str | None
) -> list[Availability] | None:
    """Query.availability for a B2B account or in a sell unit; None when neither applies to this call
    (the plain channel or all-locations figure, answered as before)."""
    scope = await account_scope(info, channel_code, account_code)
    if scope.account_code is None and unit in (None, BASE_UNIT):
        return None
    ctx = info.context.ctx
    if scope.channel_code is None:
        from app.services import queries

        views: list[AvailabilityView] = list(await queries.availability(ctx, sku_codes))
    else:
        try:
            views = list(await channels.availability(ctx, scope.channel_code, sku_codes, scope.account_code))
        except Refused as r:
            raise _query_error(r) from None
    return await in_units(ctx, [Availability.of(v) for v in views], scope.account_code, unit)


async def in_units(
    ctx: Ctx, rows: list[Availability], account_code: str | None, unit: str | None
) -> list[Availability]:
    for row in rows:
        row.account_code = account_code
    if unit in (None, BASE_UNIT) or not rows:
        return rows
    try:
        found = await units.unit_sizes_for(ctx, [r.sku_code for r in rows], unit)
    except Refused as r:
        raise _query_error(r) from None
    for row in rows:
        row.available = in_unit(row.available, found[row.sku_code])
        row.unit = found[row.sku_code].name
    return rows


async def account_availability_changed(
    info: Info, sku_codes: list[str] | None, channel_code: str | None, account_code: str
) -> AsyncGenerator[Availability, None]:
    """An account's figures: the current state, then again whenever the channel's figure of a SKU moves
    (every movement of the channel's stock, holds and rules publishes it; the relay's message is the
    signal, the account's figure is read again from the database so it equals what `reserve` holds)."""
    scope = await account_scope(info, channel_code, account_code)
    assert scope.channel_code is not None and scope.account_code is not None
    if not sku_codes:
        raise GraphQLError("accountCode needs skuCodes", extensions={"code": "BAD_USER_INPUT"})
    realtime = info.context.realtime
    check_codes("skuCodes", sku_codes, realtime.settings.max_codes_per_subscription)
    codes = list(dict.fromkeys(sku_codes))
    ctx = info.context.ctx
    mailbox = realtime.hub.subscribe(codec.availability_kind(scope.channel_code), set(codes))
    sent: dict[str, tuple[int, int]] = {}

    async def read(wanted: list[str]) -> list[Availability]:
        try:
            views = await channels.availability(ctx, scope.channel_code or "", wanted, scope.account_code)
        except Refused as r:
            raise _query_error(r) from None
        rows = [Availability.of(v) for v in views]
        return [r for r in await in_units(ctx, rows, scope.account_code, None) if _news(sent, r)]

    try:
        for row in await read(codes):  # subscribed first: a change committed meanwhile waits in the mailbox
            yield row
        while True:
            try:
                async for key, _version, _data in mailbox:
                    for row in await read([key]):
                        yield row
                return
            except ResyncNeeded:
                for row in await read(codes):
                    yield row
    finally:
        realtime.hub.unsubscribe(mailbox)


def _news(sent: dict[str, tuple[int, int]], row: Availability) -> bool:
    """Versions only go up on one subscription, and an unchanged figure is news to nobody."""
    last = sent.get(row.sku_code)
    if last is not None and row.version <= last[0]:
        return False
    sent[row.sku_code] = (row.version, row.available)
    return last is None or last[1] != row.available


# --- reserve ---------------------------------------------------------------------------------------


async def reserve_request(info: Info, input: Any, request: Any) -> Any:
    """The reserve request with its lines in base units and its account resolved for the caller's key.
    Raises Refused (UNKNOWN_UNIT, INVALID_QUANTITY, UNKNOWN_ACCOUNT, UNKNOWN_CHANNEL)."""
    line_units = [ln.unit for ln in input.lines]
    lines = await units.lines_in_base_units(info.context.ctx, request.lines, line_units)
    try:
        scope = await account_scope(info, input.channel_code, input.account_code)
    except GraphQLError as exc:
        code = (exc.extensions or {}).get("code")
        if code == "FORBIDDEN":
            raise
        from app.domain.errors import ErrorCode
        from app.domain.errors import UserError as DomainUserError

        raise Refused([DomainUserError(ErrorCode(str(code)), exc.message, ("accountCode",))]) from None
    return replace(
        request,
        lines=lines,
        channel_code=scope.channel_code,
        account_code=scope.account_code,
        allow_partial=bool(input.allow_partial),
    )


def line_outcomes(input: Any, lines: list[RequestedLine], view: ReservationView) -> list[ReserveLineOutcome]:
    """Per requested line: what it asked for (base units), what is held now, backordered, and when the
    stock covering the backorder is expected. Lines of one SKU share its reservation lines in request
    order (a partial hold fills them first come, first served)."""
    held: dict[tuple[str, str | None], int] = defaultdict(int)
    backordered: dict[tuple[str, str | None], int] = defaultdict(int)
    expected: dict[tuple[str, str | None], datetime] = {}
    named = {(ln.sku_code, ln.location_code) for ln in lines if ln.location_code is not None}
    for rl in view.lines:
        key: tuple[str, str | None] = (rl.sku_code, rl.location_code)
        if key not in named:
            key = (rl.sku_code, None)
        held[key] += rl.quantity - rl.backordered
        backordered[key] += rl.backordered
        if rl.expected_at is not None and (key not in expected or rl.expected_at > expected[key]):
            expected[key] = rl.expected_at  # the latest of the dates covering the line: all of it is there then
    out: list[ReserveLineOutcome] = []
    for i, (raw, ln) in enumerate(zip(input.lines, lines, strict=True)):
        key = (ln.sku_code, ln.location_code if ln.location_code is not None else None)
        h = min(ln.quantity, held[key])
        held[key] -= h
        b = min(ln.quantity - h, backordered[key])
        backordered[key] -= b
        out.append(
            ReserveLineOutcome(
                index=i,
                sku_code=ln.sku_code,
                unit=raw.unit or BASE_UNIT,
                requested=ln.quantity,
                held=h,
                backordered=b,
                unfilled=ln.quantity - h - b,
                expected_at=expected.get(key) if b else None,
            )
        )
    return out


# --- configuration ---------------------------------------------------------------------------------


@strawberry.input(description="A named pack of a SKU: `size` base units each; size 0 removes it")
class SellUnitInput:
    sku_code: str
    name: str
    size: int


@strawberry.type
class SellUnit:
    name: str
    size: int = strawberry.field(description="Base units in one")


@strawberry.type
class SkuSellUnits:
    sku_code: str
    units: list[SellUnit] = strawberry.field(description="Smallest first; `each` (size 1) is always there")


@strawberry.type
class SetSellUnitsPayload:
    skus: list[SkuSellUnits]
    user_errors: list[UserError]


def _sku_units(found: dict[str, list[Any]]) -> list[SkuSellUnits]:
    return [SkuSellUnits(sku_code=c, units=[SellUnit(name=u.name, size=u.size) for u in us]) for c, us in found.items()]


@strawberry.input(description="A B2B buyer company under a channel; omitted allocation fields keep their value")
class AccountInput:
    code: str
    name: str
    channel_code: str
    ring_fenced_units: int | None = strawberry.field(
        default=None, description="Units of each SKU kept for this account: the channel's other accounts never see them"
    )
    allocation_cap: int | None = strawberry.field(default=None, description="At most this many units held at once")
    allocation_percent: float | None = strawberry.field(
        default=None, description="At most this share of the channel's figure (rounded down)"
    )
    clear_cap: bool = False
    clear_percent: bool = False


@strawberry.type(description="A B2B buyer company, as the keys serving it see it")
class Account:
    code: str
    name: str
    channel_code: str
    version: int

    @classmethod
    def of(cls, v: accounts.AccountView) -> Account:
        return cls(code=v.code, name=v.name, channel_code=v.channel_code, version=v.version)


@strawberry.type(description="An account with its allocation: the merchant's terms, for operators only")
class AccountAllocation:
    code: str
    name: str
    channel_code: str
    ring_fenced_units: int
    allocation_cap: int | None
    allocation_percent: float | None
    version: int

    @classmethod
    def of(cls, v: accounts.AccountView) -> AccountAllocation:
        return cls(
            code=v.code,
            name=v.name,
            channel_code=v.channel_code,
            ring_fenced_units=v.rules.ring_fenced_units,
            allocation_cap=v.rules.allocation_cap,
            allocation_percent=v.rules.allocation_percent,
            version=v.version,
        )


@strawberry.type
class UpsertAccountsPayload:
    accounts: list[AccountAllocation]
    user_errors: list[UserError]


@strawberry.type
class SetKeyAccountsPayload:
    account_codes: list[str]
    user_errors: list[UserError]


@strawberry.type
class B2bMutation:
    @strawberry.mutation(description="Define the named packs SKUs are sold in (size 0 removes one)")
    async def set_sell_units(self, info: Info, input: list[SellUnitInput]) -> SetSellUnitsPayload:
        items = [units.SellUnitInput(i.sku_code, i.name, i.size) for i in input]
        try:
            found = await units.set_units(info.context.ctx, items)
        except Refused as r:
            return SetSellUnitsPayload(skus=[], user_errors=_errors(r))
        return SetSellUnitsPayload(skus=_sku_units(found), user_errors=[])

    @strawberry.mutation(description="Create or update B2B accounts by code")
    async def upsert_accounts(self, info: Info, input: list[AccountInput]) -> UpsertAccountsPayload:
        items = [
            accounts.AccountInput(
                code=i.code,
                name=i.name,
                channel_code=i.channel_code,
                ring_fenced_units=i.ring_fenced_units,
                allocation_cap=i.allocation_cap,
                allocation_percent=i.allocation_percent,
                clear_cap=i.clear_cap,
                clear_percent=i.clear_percent,
            )
            for i in input
        ]
        try:
            views = await accounts.upsert_accounts(info.context.ctx, items)
        except Refused as r:
            return UpsertAccountsPayload(accounts=[], user_errors=_errors(r))
        return UpsertAccountsPayload(accounts=[AccountAllocation.of(v) for v in views], user_errors=[])

    @strawberry.mutation(
        description="Bind a key (id or prefix) to the accounts it serves: one for an account's storefront, "
        "several for a sales rep, none to unbind"
    )
    async def set_key_accounts(self, info: Info, key_id: str, account_codes: list[str]) -> SetKeyAccountsPayload:
        try:
            codes = await accounts.set_key_accounts(info.context.ctx, key_id, account_codes)
        except Refused as r:
            return SetKeyAccountsPayload(account_codes=[], user_errors=_errors(r))
        return SetKeyAccountsPayload(account_codes=codes, user_errors=[])


@strawberry.type
class B2bQuery:
    @strawberry.field(description="The accounts this key serves (an admin key bound to none: every account)")
    async def accounts(self, info: Info) -> list[Account]:
        actor = acting(info).actor
        return [Account.of(v) for v in await accounts.list_accounts(info.context.ctx, actor.key_id, actor.sees_all)]

    @strawberry.field(description="The named packs each SKU is sold in")
    async def sell_units(self, info: Info, sku_codes: list[str]) -> list[SkuSellUnits]:
        async with info.context.ctx.db.read() as conn:
            found = await units.units_of(conn, list(dict.fromkeys(sku_codes)))
        return _sku_units(found)
