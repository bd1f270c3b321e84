"""the in-process limit counters and slots, journaled (ADR 16)

Revision ID: auth_0004_counters
Revises: auth_0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0004_counters"
down_revision = "auth_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_counts",
        sa.Column("bucket", sa.String(200), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "limit_slots",
        sa.Column("bucket", sa.String(200), primary_key=True),
        sa.Column("slot", sa.String(64), primary_key=True),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("limit_slots")
    op.drop_table("limit_counts")
