"""Stripe: customers per account, and the payment a ledger entry belongs to

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "billing_0003"
down_revision = "billing_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_entries", sa.Column("reference", sa.String(100), nullable=True))
    op.create_index("ix_ledger_reference", "ledger_entries", ["reference"])
    op.create_table(
        "stripe_customers",
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("customer_id", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stripe_customers")
    op.drop_index("ix_ledger_reference", "ledger_entries")
    op.drop_column("ledger_entries", "reference")
