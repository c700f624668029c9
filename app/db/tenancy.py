"""Which tenant a transaction runs for, and the database roles that make PostgreSQL enforce it.

Every tenant table has row-level security (migration 0011): the application's role (`APP_ROLE`) sees
and writes only rows whose `tenant_id` equals the transaction's `stockwire.tenant_id` setting, and
with no tenant set it sees nothing. `Database` sets that setting at the start of every transaction
(`set_config(..., true)`: transaction-local, so a pooled connection never carries one caller's
tenant into the next transaction), from `current()` here.

The tenant is a context variable: the GraphQL layer sets it per request from the caller's key
(`acting_for`), background work sets it per tenant it works on. Outside both (the command line, the
importer, a single-tenant deployment's tests) it is the default tenant, so a deployment with one
tenant needs no configuration.

Work that must span tenants runs in `system()` mode: the transaction switches to `SYSTEM_ROLE`,
whose policies reach only what that work needs (claiming outbox rows, finding an API key by its
prefix) and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

DEFAULT_TENANT = 1
APP_ROLE = "stockwire_app"
SYSTEM_ROLE = "stockwire_system"
SETTING = "stockwire.tenant_id"

# None: no tenant (every tenant table then reads as empty)
_tenant: ContextVar[int | None] = ContextVar("stockwire_tenant", default=DEFAULT_TENANT)
_system: ContextVar[bool] = ContextVar("stockwire_system", default=False)


def current() -> int | None:
    return _tenant.get()


def enter(tenant_id: int | None) -> None:
    """Act for this tenant from now on in the running context (one made for a task of its own)."""
    _tenant.set(tenant_id)


def in_system_mode() -> bool:
    return _system.get()


@contextmanager
def acting_for(tenant_id: int | None) -> Iterator[None]:
    """Every transaction started inside runs for this tenant (None: for none, so it sees nothing)."""
    token = _tenant.set(tenant_id)
    try:
        yield
    finally:
        _tenant.reset(token)


@contextmanager
def system() -> Iterator[None]:
    """Transactions started inside run as SYSTEM_ROLE (cross-tenant work; see the module docstring)."""
    token = _system.set(True)
    try:
        yield
    finally:
        _system.reset(token)


def tenant_prelude(tenant_id: int) -> str:
    """Switch a running transaction (e.g. a system one) to the application's role, for one tenant."""
    return f"SELECT set_config('role', '{APP_ROLE}', true), set_config('{SETTING}', '{int(tenant_id)}', true)"


def transaction_prelude() -> str:
    """The one statement that scopes a transaction (sent as text: no parameters, no prepare).

    The tenant id is an int (never text from a request), so it is safe to inline."""
    if _system.get():
        return f"SELECT set_config('role', '{SYSTEM_ROLE}', true), set_config('{SETTING}', '', true)"
    tenant = _tenant.get()
    value = "" if tenant is None else str(int(tenant))
    return f"SELECT set_config('{SETTING}', '{value}', true)"
