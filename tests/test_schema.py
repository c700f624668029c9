"""The committed schema.graphql is the schema the server serves (regenerate: ./dev schema)."""

from __future__ import annotations

from pathlib import Path

from app.graphql.schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"


def test_committed_schema_equals_served_schema() -> None:
    assert SCHEMA_FILE.read_text() == schema.as_str() + "\n", "schema.graphql is stale: run ./dev schema"


def test_contract_names_are_served() -> None:
    text = SCHEMA_FILE.read_text()
    for name in (
        "stockLevels(",
        "availability(",
        "reservation(id: ID!)",
        "reservations(cartRef: String!)",
        "inventoryEvents(",
        "upsertSkus(",
        "upsertLocations(",
        "recordInventoryEvents(",
        "reserve(input: ReserveInput!)",
        "commitReservation(id: ID!, orderRef: String!)",
        "releaseReservation(id: ID!)",
        "extendReservation(id: ID!, ttlSeconds: Int!)",
        "availabilityChanged(",
        "stockLevelChanged(",
        "enum EventStatus",
        "enum ReservationStatus",
        "enum InventoryEventType",
        "enum LocationKind",
    ):
        assert name in text, name
