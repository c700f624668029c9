"""The operations this client sends, from clients/operations/manifest.json (the server's trusted documents).

Each request names its document by SHA-256 in `extensions.persistedQuery` (APQ style). Over HTTP the text
is left out when the server knows the hash; over websockets it always goes along (the protocol wants a
`query`), and the server checks the two match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from gql import GraphQLRequest
from graphql import DocumentNode, parse

MANIFEST = Path(__file__).resolve().parents[1] / "operations" / "manifest.json"


@dataclass(frozen=True)
class Operation:
    name: str
    kind: str  # query, mutation, subscription
    body: str
    sha256: str

    @cached_property
    def document(self) -> DocumentNode:
        return parse(self.body)

    def request(self, variables: dict[str, Any], *, with_text: bool = True) -> OperationRequest:
        return OperationRequest(self, variables, with_text=with_text)


class OperationRequest(GraphQLRequest):
    """A gql request whose payload names its document by hash, with the text or without it."""

    def __init__(self, operation: Operation, variables: dict[str, Any], *, with_text: bool) -> None:
        super().__init__(operation.document, variable_values=variables, operation_name=operation.name)
        self.operation = operation
        self.with_text = with_text

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "operationName": self.operation.name,
            "variables": self.variable_values or {},
            "extensions": {"persistedQuery": {"version": 1, "sha256Hash": self.operation.sha256}},
        }
        if self.with_text:
            payload["query"] = self.operation.body
        return payload


def load(path: Path = MANIFEST) -> dict[str, Operation]:
    manifest = json.loads(path.read_text())
    return {op["name"]: Operation(op["name"], op["type"], op["body"], op["id"]) for op in manifest["operations"]}


OPERATIONS = load()
