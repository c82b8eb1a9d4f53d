"""proxy: a route may shadow a share of its requests of its own

Revision ID: c4e8b2d1f9a3
Revises: c4f1d2e3a5b6
Create Date: 2026-11-29 04:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e8b2d1f9a3"
down_revision: str | Sequence[str] | None = "c4f1d2e3a5b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("proxy_routes") as batch:
        batch.add_column(sa.Column("shadow_sample", sa.Float, nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("proxy_routes") as batch:
        batch.drop_column("shadow_sample")
