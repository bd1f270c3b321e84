"""holds: worst-case cost of requests in flight

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_holds_account", "holds", ["account_id", "expires_at_ms"])


def downgrade() -> None:
    op.drop_table("holds")
