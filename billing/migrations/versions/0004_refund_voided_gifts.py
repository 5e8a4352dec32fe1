"""a refund request records the gifts it voids

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: requests accepted before this revision carry no list (all the order's gifts).
    op.add_column("refunds", sa.Column("voided_gifts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("voided_gifts")
