"""billing: indexes for keyset lists

Revision ID: 1348ce13c28c
Revises: 852aed0c1d3f
Create Date: 2026-11-29 00:18:24.347209

The lists page by keyset in ``(created_at, id)`` order, newest invoices first
(``ORDER BY created_at DESC, id DESC``). The ascending ``(created_at, id)``
index serves that read backwards; the old order (``created_at DESC, id``)
mixed directions and made both databases sort the rows in a temporary B-tree.
Each way the invoice list is filtered gets an index that ends in the list's
order, so that a page is one index range however deep; the user index
replaces ``(user_id, status, created_at)``, which could not give that order
for a user's invoices of every status. Plans and subscriptions are listed
oldest first and had no index on ``created_at`` at all.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "1348ce13c28c"
down_revision: str | Sequence[str] | None = "852aed0c1d3f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_billing_plans_created", "billing_plans", ["created_at", "id"])
    op.create_index(
        "ix_billing_subscriptions_created", "billing_subscriptions", ["created_at", "id"]
    )
    op.create_index(
        "ix_billing_invoices_user_created", "billing_invoices", ["user_id", "created_at", "id"]
    )
    op.create_index(
        "ix_billing_invoices_status_created", "billing_invoices", ["status", "created_at", "id"]
    )
    op.drop_index("ix_billing_invoices_user_status", table_name="billing_invoices")


def downgrade() -> None:
    op.create_index(
        "ix_billing_invoices_user_status", "billing_invoices", ["user_id", "status", "created_at"]
    )
    op.drop_index("ix_billing_invoices_status_created", table_name="billing_invoices")
    op.drop_index("ix_billing_invoices_user_created", table_name="billing_invoices")
    op.drop_index("ix_billing_subscriptions_created", table_name="billing_subscriptions")
    op.drop_index("ix_billing_plans_created", table_name="billing_plans")
