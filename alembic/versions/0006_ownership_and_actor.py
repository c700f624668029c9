"""isolation between keys: owners of reservations and routing decisions, the ledger's actor, key audit

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the API key that made a reservation / a routing decision; NULL: made without a key (admin only)
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_key_id", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_reservations_owner_key_id_cart_ref", ["owner_key_id", "cart_ref"])
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_key_id", sa.String(length=36), nullable=True))
    # the key that recorded a ledger row; NULL: Stockwire itself (the expiry sweeper) or a row older
    # than this migration
    with op.batch_alter_table("inventory_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_key_id", sa.String(length=36), nullable=True))
    op.create_table(
        "api_key_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("actor_key_id", sa.String(length=36), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_api_key_events_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key_events")),
    )
    op.create_index("ix_api_key_events_key_id", "api_key_events", ["key_id"])

    # Until now the idempotency scope was the key that made a reservation: it becomes its owner, and a
    # decision belongs to the owner of the reservation it made. Keys made or revoked before are audited
    # as done from the command line (no key), at the times the keys table kept.
    op.execute("UPDATE reservations SET owner_key_id = idempotency_scope WHERE idempotency_scope <> ''")
    op.execute(
        "UPDATE routing_decisions SET owner_key_id = "
        "(SELECT r.owner_key_id FROM reservations r WHERE r.id = routing_decisions.reservation_id) "
        "WHERE reservation_id IS NOT NULL"
    )
    op.execute(
        "INSERT INTO api_key_events (key_id, action, actor_key_id, at) "
        "SELECT id, 'CREATED', NULL, created_at FROM api_keys"
    )
    op.execute(
        "INSERT INTO api_key_events (key_id, action, actor_key_id, at) "
        "SELECT id, 'REVOKED', NULL, revoked_at FROM api_keys WHERE revoked_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_api_key_events_key_id", table_name="api_key_events")
    op.drop_table("api_key_events")
    with op.batch_alter_table("inventory_events", schema=None) as batch_op:
        batch_op.drop_column("actor_key_id")
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.drop_column("owner_key_id")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_owner_key_id_cart_ref")
        batch_op.drop_column("owner_key_id")
