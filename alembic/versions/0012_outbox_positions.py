"""An index of outbox rows by position, for the relay's claim of the positions a commit named.

The hinted claim (app/db/pg.py `_CLAIM_AND_READ`) found a commit's rows by joining the outbox to the
named positions with no index to probe: a queue's statistics say it is nearly empty, and Postgres
nested the whole outbox inside a scan of the whole outbox. With a backlog of 12,104 rows (a catalogue
load) one claim ran for minutes and no change was published meanwhile (bench/README, round h23).

Revision ID: 0012_outbox_positions
Revises: 0011_tenants
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_outbox_positions"
down_revision: str | None = "0011_tenants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_position", "outbox", ["tenant_id", "sku_id", "location_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_position", "outbox")
