"""holds, granted credit, entry references, Stripe customers

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("wallets", sa.Column("credit_limit_micros", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("ledger_entries", sa.Column("reference", sa.String(100), nullable=True))
    op.create_index("ix_ledger_reference", "ledger_entries", ["reference"])
    op.create_index("ix_ledger_request_id", "ledger_entries", ["request_id"])
    op.add_column("usage_records", sa.Column("hold_id", sa.String(64), nullable=True))
    op.create_table(
        "holds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_holds_account_expires", "holds", ["account_id", "expires_at_ms"])
    op.create_index("ix_holds_expires", "holds", ["expires_at_ms"])
    op.create_table(
        "stripe_customers",
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("customer_id", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stripe_customers")
    op.drop_table("holds")
    op.drop_column("usage_records", "hold_id")
    op.drop_index("ix_ledger_request_id", "ledger_entries")
    op.drop_index("ix_ledger_reference", "ledger_entries")
    op.drop_column("ledger_entries", "reference")
    op.drop_column("wallets", "credit_limit_micros")
