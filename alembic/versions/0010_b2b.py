"""B2B: sell units per SKU, accounts under channels with their own allocation, keys bound to accounts

`sku_units`: named packs of a SKU (each, inner of 6, case of 12) by their size in base units.
`inventory_events.unit`: the unit an event was reported in (its quantity is stored in base units).
`accounts`: B2B buyer companies under a channel, with an optional allocation (ring-fenced units, a cap,
a share of the channel's figure). `reservations.account_code`: the account a hold was made for (its
holds count against that allocation). `api_key_accounts`: the accounts a key serves (a rep's key, or an
account's own storefront key).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sku_units",
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["sku_id"], ["skus.id"], name=op.f("fk_sku_units_sku_id_skus")),
        sa.PrimaryKeyConstraint("sku_id", "name", name=op.f("pk_sku_units")),
        sa.CheckConstraint("size >= 1", name=op.f("ck_sku_units_size_positive")),
    )
    op.add_column("inventory_events", sa.Column("unit", sa.String(length=50), nullable=True))
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("ring_fenced_units", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("allocation_cap", sa.Integer(), nullable=True),
        sa.Column("allocation_percent", sa.Numeric(9, 4), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name=op.f("fk_accounts_channel_id_channels")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("code", name=op.f("uq_accounts_code")),
    )
    op.add_column("reservations", sa.Column("account_code", sa.String(length=100), nullable=True))
    op.create_index("ix_reservations_account_code_status", "reservations", ["account_code", "status"])
    op.create_table(
        "api_key_accounts",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_api_key_accounts_key_id_api_keys")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_api_key_accounts_account_id_accounts")),
        sa.PrimaryKeyConstraint("key_id", "account_id", name=op.f("pk_api_key_accounts")),
    )


def downgrade() -> None:
    op.drop_table("api_key_accounts")
    op.drop_index("ix_reservations_account_code_status", table_name="reservations")
    op.drop_column("reservations", "account_code")
    op.drop_table("accounts")
    op.drop_column("inventory_events", "unit")
    op.drop_table("sku_units")
