"""The one place the GraphQL schema is assembled."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from graphql import ASTValidationRule, GraphQLError
from graphql.validation.rules.max_introspection_depth_rule import MaxIntrospectionDepthRule
from strawberry import Schema
from strawberry.extensions import ParserCache, max_aliases, query_depth_limiter
from strawberry.tools import merge_types

from app.graphql.b2b import B2bMutation, B2bQuery
from app.graphql.channel_holds import ExternalHoldMutation
from app.graphql.channel_reports import ChannelReportQuery, ReconciliationMutation
from app.graphql.channels import ChannelMutation, ChannelQuery, ChannelSubscription
from app.graphql.deliveries import DeliveryMutation, DeliveryQuery
from app.graphql.document_cache import ValidatedDocuments, ValidationByQuery
from app.graphql.errors import ClientErrors, ErrorPolicy, OperationLimits, StockwireSchema
from app.graphql.input_guard import guard
from app.graphql.keys import KeyMutation, KeyQuery
from app.graphql.known_documents import KnownDocuments, RememberDocuments
from app.graphql.limits import executor_for
from app.graphql.mutations import Mutation
from app.graphql.ops import OpsQuery
from app.graphql.permissions import root_fields, secure
from app.graphql.queries import BadCursorError, Query
from app.graphql.routing import RoutingMutation, RoutingQuery
from app.graphql.subscriptions import Subscription
from app.graphql.types import DATETIME
from app.observability.extension import Observe
from app.settings import Settings

# Errors a client caused and may read; anything else is a fault and is masked (and logged).
_VISIBLE = (ValueError, BadCursorError)
ERROR_POLICY = ErrorPolicy(_VISIBLE)


def _should_mask(error: GraphQLError) -> bool:
    return ERROR_POLICY.is_fault(error)


# The limit rules are built once per limit value: the validation cache is keyed by the rule classes,
# and QueryDepthLimiter/MaxAliasesLimiter built per request would make a new class, and a miss, every time.
@cache
def _limit_rules(max_depth: int, max_aliases_count: int) -> tuple[type[ASTValidationRule], ...]:
    return (
        query_depth_limiter.create_validator(max_depth, None, None),
        max_aliases.create_validator(max_aliases_count),
        # introspection is left out of the depth limit; this stops `fields { type { fields ...` fan-outs
        MaxIntrospectionDepthRule,
    )


def build_schema(settings: Settings | None = None) -> Schema:
    s = settings or Settings()
    rules = list(_limit_rules(s.max_query_depth, s.max_aliases))
    # the channel types in this order keep the served field order (schema.graphql)
    query = merge_types(
        "Query",
        (Query, RoutingQuery, ChannelQuery, ChannelReportQuery, KeyQuery, DeliveryQuery, OpsQuery, B2bQuery),
    )
    mutation = merge_types(
        "Mutation",
        (
            Mutation,
            RoutingMutation,
            ChannelMutation,
            ExternalHoldMutation,
            ReconciliationMutation,
            KeyMutation,
            DeliveryMutation,
            B2bMutation,
        ),
    )
    subscription = merge_types("Subscription", (Subscription, ChannelSubscription))
    validated = ValidatedDocuments(maxsize=1024)  # this schema's own: its rules and types
    known = KnownDocuments(maxsize=1024)  # documents that validated: executed without Strawberry's machinery
    secure(query, mutation, subscription)  # the scope every operation needs (app/graphql/permissions.py)
    guard(root_fields(query, mutation, subscription))  # what the database can store (app/graphql/input_guard.py)
    built = StockwireSchema(
        query=query,
        mutation=mutation,
        subscription=subscription,
        # one rendering per subscription event (fanout.py); queries and mutations over the cost limit refused
        execution_context_class=executor_for(s.max_query_cost, s.query_cost_list_size),
        scalar_overrides={datetime: DATETIME},  # DateTime read without dateutil for plain ISO forms
        extensions=[
            # first, so its validation hook closes last: it remembers what every other one let through
            lambda: RememberDocuments(known),
            # the token limit and the limit rules; before the caches, which read them
            lambda: OperationLimits(s.max_query_tokens, tuple(rules)),
            # without these Strawberry parses and validates every request again (pitfalls.md #6)
            # factories: a fresh extension per request; the caches themselves are module-level and shared
            lambda: ParserCache(maxsize=1024),
            lambda: ValidationByQuery(validated),  # keyed by the query text (app/graphql/document_cache.py)
            lambda: ClientErrors(ERROR_POLICY),
            Observe,  # per-operation metrics and the key id in log lines (app/observability)
        ],
    )
    built.error_policy = ERROR_POLICY
    built.known_documents = known
    return built


schema = build_schema()
