"""billing: write ownership per user bucket, while the data moves

Revision ID: 3b7e1f0c9a21
Revises: 1348ce13c28c
Create Date: 2026-11-29 01:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import servicekit.db

# revision identifiers, used by Alembic.
revision: str = "3b7e1f0c9a21"
down_revision: str | Sequence[str] | None = "1348ce13c28c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Written by the data mover only; empty while no move is under way.
    op.create_table(
        "billing_ownership",
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", servicekit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("slot", name=op.f("pk_billing_ownership")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("billing_ownership")
