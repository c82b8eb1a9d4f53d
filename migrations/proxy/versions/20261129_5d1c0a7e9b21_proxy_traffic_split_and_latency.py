"""proxy: traffic split by upstream and a latency histogram

Revision ID: 5d1c0a7e9b21
Revises: a7d3c0e1b2f4
Create Date: 2026-11-29 00:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5d1c0a7e9b21"
down_revision: str | Sequence[str] | None = "a7d3c0e1b2f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Which upstream answered, and how fast: the dashboard's live panel."""
    with op.batch_alter_table("proxy_traffic", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("via_monolith", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("via_service", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("latency", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxy_traffic", schema=None) as batch_op:
        batch_op.drop_column("latency")
        batch_op.drop_column("via_service")
        batch_op.drop_column("via_monolith")
