"""proxy: a route names the data move it depends on

Revision ID: a7d3c0e1b2f4
Revises: f2e799b46b54
Create Date: 2026-11-29 00:25:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7d3c0e1b2f4"
down_revision: str | Sequence[str] | None = "f2e799b46b54"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("proxy_routes") as batch:
        batch.add_column(sa.Column("data", sa.String(100), nullable=True))
    # Tables seeded before this revision: the billing service's routes serve
    # billing's data (what routes.toml now says with `data = "billing"`).
    op.execute(
        "UPDATE proxy_routes SET data = 'billing' "
        "WHERE service = 'billing' AND name LIKE 'billing-%'"
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("proxy_routes") as batch:
        batch.drop_column("data")
