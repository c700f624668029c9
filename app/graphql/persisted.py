"""Trusted documents: operations sent by hash (persisted queries), and storefront keys held to them.

The clients' operations live in `clients/operations/*.graphql`; `python -m app.graphql.persisted`
writes `clients/operations/manifest.json` from them, in Apollo's persisted-query manifest format
(`{"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{id, name, type, body}]}`,
`id` = SHA-256 of `body`), and both clients send the `body` and hash from that file. A request names its
document APQ-style, `extensions.persistedQuery.sha256Hash`: with no `query` the server runs the known
document of that hash (smaller requests); with one, the hash must be the query's.

With `storefront_trusted_documents_only`, a key whose only scope is `storefront` (the one visible in
browsers) may run nothing but these documents, so a public key cannot send arbitrary queries. Over
websockets a refused subscribe closes the connection with 4400 (the protocol's "bad message").
Apollo-style automatic registration is deliberately absent: a hash is known only if it was shipped.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from graphql import DocumentNode, FragmentDefinitionNode, OperationDefinitionNode, parse, print_ast
from strawberry.http import GraphQLRequestData

from app.security.auth import Principal
from app.security.scopes import Scope
from app.settings import Settings

MANIFEST_FORMAT = "apollo-persisted-query-manifest"
OPERATIONS_DIR = Path(__file__).resolve().parents[2] / "clients" / "operations"
DEFAULT_MANIFEST = OPERATIONS_DIR / "manifest.json"

# the websocket's caller, set once its connection_init is accepted (messages are read in that task)
socket_caller: ContextVar[Principal | None] = ContextVar("stockwire_socket_caller", default=None)


class Refused(Exception):
    """A request whose document cannot be admitted; `code` is the error's extensions.code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RefusedMessage(json.JSONDecodeError):
    """A websocket message refused: a JSONDecodeError, which Strawberry answers with close 4400."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(f"{refused.code}: {refused.message}", "", 0)


def sha256_hex(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def build_manifest(directory: Path = OPERATIONS_DIR) -> dict[str, Any]:
    """One entry per named operation in `directory/*.graphql`, with the file's fragments; sorted by name."""
    operations: list[dict[str, str]] = []
    for path in sorted(directory.glob("*.graphql")):
        document = parse(path.read_text())
        fragments = [d for d in document.definitions if isinstance(d, FragmentDefinitionNode)]
        for definition in document.definitions:
            if not isinstance(definition, OperationDefinitionNode):
                continue
            if definition.name is None:
                raise ValueError(f"{path.name}: every operation needs a name (the clients look them up by it)")
            body = print_ast(DocumentNode(definitions=(definition, *fragments)))
            name, kind = definition.name.value, definition.operation.value
            operations.append({"id": sha256_hex(body), "name": name, "type": kind, "body": body})
    names = [op["name"] for op in operations]
    if len(set(names)) != len(names):
        raise ValueError(f"operation names must be unique across {directory}: {sorted(names)}")
    operations.sort(key=lambda op: op["name"])
    return {"format": MANIFEST_FORMAT, "version": 1, "operations": operations}


def _requested_hash(extensions: object) -> str | None:
    if not isinstance(extensions, Mapping):
        return None
    persisted = extensions.get("persistedQuery")
    if persisted is None:
        return None
    digest = persisted.get("sha256Hash") if isinstance(persisted, Mapping) else None
    if not isinstance(digest, str):
        raise Refused("BAD_REQUEST", "extensions.persistedQuery needs a sha256Hash string")
    return digest.lower()


@dataclass(frozen=True)
class TrustedDocuments:
    documents: Mapping[str, str] = field(default_factory=dict)  # sha256 -> body
    storefront_only: bool = False

    @classmethod
    def load(cls, path: Path, storefront_only: bool = False) -> TrustedDocuments:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path} is not an {MANIFEST_FORMAT} file")
        documents = {}
        for op in manifest["operations"]:
            if sha256_hex(op["body"]) != op["id"]:
                raise ValueError(f"{path}: the id of {op['name']} is not the SHA-256 of its body")
            documents[op["id"]] = op["body"]
        return cls(documents, storefront_only)

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustedDocuments:
        path = Path(settings.persisted_documents) if settings.persisted_documents else DEFAULT_MANIFEST
        if not settings.persisted_documents and not path.exists():
            if settings.storefront_trusted_documents_only:
                raise ValueError("storefront_trusted_documents_only needs a manifest (STOCKWIRE_PERSISTED_DOCUMENTS)")
            return cls()
        return cls.load(path, settings.storefront_trusted_documents_only)

    def resolve(self, query: str | None, extensions: object, principal: Principal | None) -> str | None:
        """The document to run for this request, or Refused."""
        digest = _requested_hash(extensions)
        if digest is not None and query is None:
            known = self.documents.get(digest)
            if known is None:
                raise Refused("PERSISTED_QUERY_NOT_FOUND", "unknown document hash: send the query with it")
            return known
        if digest is not None and query is not None and sha256_hex(query) != digest:
            raise Refused("PERSISTED_QUERY_HASH_MISMATCH", "extensions.persistedQuery.sha256Hash is not the query's")
        if self._held_to_trusted(principal) and (query is None or sha256_hex(query) not in self.documents):
            raise Refused("PERSISTED_QUERY_REQUIRED", "this key may only run the trusted documents (send them by hash)")
        return query

    def admit(self, request: GraphQLRequestData, principal: Principal | None) -> GraphQLRequestData:
        """An HTTP request with its document filled in from the hash (or Refused)."""
        query = self.resolve(request.query, request.extensions, principal)
        return request if query is request.query else replace(request, query=query)

    def admit_message(self, message: object) -> object:
        """A websocket message (graphql-transport-ws `subscribe`, legacy `start`) with its document filled in."""
        if not isinstance(message, dict) or message.get("type") not in ("subscribe", "start"):
            return message
        payload = message.get("payload")
        if not isinstance(payload, dict):
            return message
        query = payload.get("query")
        try:
            resolved = self.resolve(
                query if isinstance(query, str) else None, payload.get("extensions"), socket_caller.get()
            )
        except Refused as refused:
            raise RefusedMessage(refused) from None
        if resolved is not query:
            message = {**message, "payload": {**payload, "query": resolved}}
        return message

    def _held_to_trusted(self, principal: Principal | None) -> bool:
        # fail closed: with the setting on, a caller not known yet is held to the documents too
        return self.storefront_only and (principal is None or principal.scopes == {Scope.STOREFRONT})


def main() -> None:
    """`python -m app.graphql.persisted [DIR]`: write DIR/manifest.json (default clients/operations)."""
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else OPERATIONS_DIR
    manifest = build_manifest(directory)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(manifest['operations'])} operations -> {directory / 'manifest.json'}")


if __name__ == "__main__":
    main()
