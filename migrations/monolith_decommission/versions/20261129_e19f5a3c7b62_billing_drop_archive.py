"""billing: drop the archived tables

Revision ID: e19f5a3c7b62
Revises: b7c4e2a91d05
Create Date: 2026-11-29 04:00:01.000000

The second half of billing's decommission, weeks later: once no one has
needed the archived tables (and a backup of them is kept elsewhere), drop
them. Final, so it asks for it in words:

    alembic -n monolith_decommission -x confirm=drop-archived-billing upgrade billing_drop_archive
"""

from collections.abc import Sequence

from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "e19f5a3c7b62"
down_revision: str | Sequence[str] | None = "b7c4e2a91d05"
branch_labels: str | Sequence[str] | None = ("billing_drop_archive",)
depends_on: str | Sequence[str] | None = None

TABLES = (
    "archived_billing_payments",
    "archived_billing_invoices",
    "archived_billing_subscriptions",
    "archived_billing_plans",
    "archived_billing_idempotency_keys",
    "archived_billing_outbox",
    "archived_billing_processed_events",
    "archived_billing_ownership",
)
CONFIRMATION = "drop-archived-billing"


def upgrade() -> None:
    """Drop the archived billing tables (asked for with -x confirm=drop-archived-billing)."""
    if context.get_x_argument(as_dictionary=True).get("confirm") != CONFIRMATION:
        raise RuntimeError(
            "dropping billing's archived tables cannot be undone: back them up, then "
            f"run it with `-x confirm={CONFIRMATION}`"
        )
    for table in TABLES:
        op.drop_table(table)


def downgrade() -> None:
    """A drop is not undone by a migration: restore the archive from its backup."""
    raise RuntimeError(
        "billing's archived tables were dropped; restore them from the backup taken before"
    )
