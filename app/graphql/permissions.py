"""The scope every operation needs, in one table, applied to the schema when it is built.

Each root field (query, mutation, subscription) names the scopes that may call it: a key with any of
them may. A root field missing from the table is refused to everyone (fails closed), and
tests/test_security_scopes.py fails, so a new operation cannot ship without a decision.
`admin` implies no other scope (README.md, section Security, says why).

Some fields of the types an operation returns are internals a public storefront key must not read
(`FIELDS`): selecting one without its scope refuses the whole operation with FORBIDDEN, before it
runs. The same check tells the services which key acts (`acting`), for ownership and the ledger.

Mutations that hold stock are also rate-limited per key here (`HOLDS`), returning the payload with
a RATE_LIMITED userError, as the contract wants expected refusals reported.

The parts live by job: app/graphql/scope_table.py (REQUIRED, FIELDS, STOREFRONT_FIELDS, HOLDS),
app/graphql/field_scopes.py (the walk over the selected fields), app/graphql/scope_check.py (the
scope check, the input-size check, the hold rate limit, `secure`, `acting`). Every name stays
importable from here.
"""

from __future__ import annotations

from app.graphql.field_scopes import graphql_name, reaches_restricted
from app.graphql.scope_check import (
    HasScope,
    HoldRateLimit,
    ScopeCheck,
    acting,
    actor_of,
    count_items,
    idempotency_scope,
    required_scopes,
    root_fields,
    secure,
    tenant_of,
)
from app.graphql.scope_table import FIELDS, HOLDS, REQUIRED, ROOT_TYPES, STOREFRONT_FIELDS, S

__all__ = [
    "FIELDS",
    "HOLDS",
    "REQUIRED",
    "ROOT_TYPES",
    "STOREFRONT_FIELDS",
    "HasScope",
    "HoldRateLimit",
    "S",
    "ScopeCheck",
    "acting",
    "actor_of",
    "count_items",
    "graphql_name",
    "idempotency_scope",
    "reaches_restricted",
    "required_scopes",
    "root_fields",
    "secure",
    "tenant_of",
]
