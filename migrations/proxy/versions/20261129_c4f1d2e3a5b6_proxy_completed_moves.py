"""proxy: data moves whose journey ended (their routes stay on the service)

Revision ID: c4f1d2e3a5b6
Revises: 5d1c0a7e9b21
Create Date: 2026-11-29 04:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import servicekit.db

revision: str = "c4f1d2e3a5b6"
down_revision: str | Sequence[str] | None = "5d1c0a7e9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "proxy_completed_moves",
        sa.Column("move", sa.String(length=100), nullable=False),
        sa.Column("completed_at", servicekit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("move", name=op.f("pk_proxy_completed_moves")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("proxy_completed_moves")
