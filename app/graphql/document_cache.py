"""Validation results cached by the query text, not by the parsed document.

Strawberry's ValidationCache keys an lru_cache on (schema, DocumentNode, rules): hashing a DocumentNode
walks the whole tree on every request (graphql-core hashes nodes by their fields), which profiled as
one of the largest costs of a small mutation. The query text is the document (ParserCache parses it
with fixed options, and a document over the token limit never reaches validation), and a str caches
its own hash, so a hit costs one dict lookup. One cache per built schema (its rules and types).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from graphql import ASTValidationRule, GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from app.compat import core_schema

Key = tuple[str, tuple[type[ASTValidationRule], ...]]


class ValidatedDocuments:
    """An LRU of (query text, rules) -> the validation errors (shared: read-only once stored)."""

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self.entries: OrderedDict[Key, list[GraphQLError]] = OrderedDict()

    def get(self, key: Key) -> list[GraphQLError] | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: Key, errors: list[GraphQLError]) -> None:
        self.entries[key] = errors
        if len(self.entries) > self.maxsize:
            self.entries.popitem(last=False)


class ValidationByQuery(SchemaExtension):
    """Runs Strawberry's validation once per distinct query text (and rule set)."""

    def __init__(self, cache: ValidatedDocuments) -> None:
        self.cache = cache

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None and ec.validation_rules:
            query = ec.query
            if isinstance(query, str):
                key = (query, ec.validation_rules)
                errors = self.cache.get(key)
                if errors is None:
                    errors = validate_document(core_schema(ec), document, ec.validation_rules)
                    self.cache.put(key, errors)
            else:  # no text to key on (a document given directly): validate it
                errors = validate_document(core_schema(ec), document, ec.validation_rules)
            ec.pre_execution_errors = errors
        yield
