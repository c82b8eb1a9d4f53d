"""billing: archive the tables of a module decommissioned here

Revision ID: b7c4e2a91d05
Revises:
Create Date: 2026-11-29 04:00:00.000000

In the decommission environment (``alembic -n monolith_decommission``), not
the monolith's: it runs after an operator's decision, which ``strangler data
complete billing`` records in this database (every row of
``billing_ownership`` ``retired``, after checking that the service owns
every record and a verification of the copy is clean) before applying this
revision. Run by hand before that decision, it refuses.

It renames, never drops: the archived tables are the way back for a while
(``downgrade`` renames them back). ``billing_drop_archive`` drops them later.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b7c4e2a91d05"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("billing_archive",)
# The tables as the monolith's billing branch left them (3b7e1f0c9a21), in
# the monolith's environment: another history, so not a dependency here.
depends_on: str | Sequence[str] | None = None

#: Children first, so that no foreign key points at a table renamed before it.
TABLES = (
    "billing_payments",
    "billing_invoices",
    "billing_subscriptions",
    "billing_plans",
    "billing_idempotency_keys",
    "billing_outbox",
    "billing_processed_events",
    "billing_ownership",
)
PREFIX = "archived_"
RETIRED = "retired"


def upgrade() -> None:
    """Rename billing's tables to archived_billing_*, if the decision was recorded."""
    connection = op.get_bind()
    states = connection.execute(sa.text("SELECT DISTINCT state FROM billing_ownership")).scalars()
    if set(states) != {RETIRED}:
        raise RuntimeError(
            "billing has not been decommissioned in this database: its tables are still in "
            "use. `strangler data complete billing` checks that the billing service owns every "
            "record and holds a proved copy, records the decision, and archives them"
        )
    undelivered = connection.execute(
        sa.text("SELECT count(*) FROM billing_outbox WHERE delivered_at IS NULL")
    ).scalar_one()
    if undelivered:
        raise RuntimeError(
            f"billing's outbox still holds {undelivered} undelivered event(s): archiving it "
            "would lose them. Deliver them first (`flask --app monolith events relay --once`; "
            "parked ones: `flask --app monolith events parked`, then `events replay ID`)"
        )
    for table in TABLES:
        op.rename_table(table, PREFIX + table)


def downgrade() -> None:
    """Bring the tables back as they were archived (not the service's writes since)."""
    for table in reversed(TABLES):
        op.rename_table(PREFIX + table, table)
