"""per-key limit overrides and the guest account

Revision ID: auth_0002
Revises: auth_0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0002"
down_revision = "auth_0001"
branch_labels = None
depends_on = None

LIMITS = ("rpm_limit", "requests_per_day_limit", "tokens_per_day_limit", "concurrency_limit")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for column in LIMITS:
            batch.add_column(sa.Column(column, sa.BigInteger, nullable=True))
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("plan", sa.String),
        sa.column("created_at_ms", sa.BigInteger),
    )
    op.bulk_insert(accounts, [{"id": "acc_guest", "name": "guest sandbox", "plan": "guest", "created_at_ms": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM accounts WHERE id = 'acc_guest'")
    with op.batch_alter_table("api_keys") as batch:
        for column in LIMITS:
            batch.drop_column(column)
