"""per-key routing mode and preferred provider

Revision ID: auth_0003
Revises: auth_0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0003"
down_revision = "auth_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("routing_mode", sa.String(12), nullable=True))
        batch.add_column(sa.Column("preferred_provider", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("preferred_provider")
        batch.drop_column("routing_mode")
