"""What can be moved: a named set of tables, parents first, from one database
to another. The names of the two sides are what reports call them."""

from __future__ import annotations

import dataclasses

__all__ = ["BILLING", "MOVES", "Belongs", "Move"]


@dataclasses.dataclass(frozen=True)
class Belongs:
    """How a table's record finds the user whose slot owns it (see
    servicekit.ownership); none of the three: a record of no user (slot 100)."""

    #: The user is this column of the record itself.
    user_column: str | None = None
    #: (this table's column, the parent table it refers to by ``id``, the
    #: parent's user column): the record belongs to its parent's user.
    through: tuple[str, str, str] | None = None
    #: The user is the part after the last ``:`` of this key column (an
    #: idempotency scope made with servicekit.ownership.acting_scope).
    user_in_key: str | None = None


@dataclasses.dataclass(frozen=True)
class Move:
    name: str
    #: Copied in this order: a table after every table it refers to.
    tables: tuple[str, ...]
    source_side: str
    target_side: str
    #: Whose slot each table's records are in; a table not named is slot 100's.
    belongs: dict[str, Belongs] = dataclasses.field(default_factory=dict)
    #: The revision of the decommission's Alembic environment that archives the
    #: source's tables once the move is completed (None: archived by hand).
    archive_revision: str | None = None

    @property
    def ownership_table(self) -> str:
        return f"{self.name}_ownership"


#: Billing's data: its records and the idempotency records of its commands (a
#: payment retried after its user moved must replay, not pay twice). Not its
#: outbox (events belong to whoever produced them) nor its inbox.
BILLING = Move(
    name="billing",
    tables=(
        "billing_plans",
        "billing_subscriptions",
        "billing_invoices",
        "billing_payments",
        "billing_idempotency_keys",
    ),
    source_side="monolith",
    target_side="service",
    belongs={
        "billing_subscriptions": Belongs(user_column="user_id"),
        "billing_invoices": Belongs(user_column="user_id"),
        "billing_payments": Belongs(through=("invoice_id", "billing_invoices", "user_id")),
        # Keys made without an acting user (before any move) are slot 100's.
        "billing_idempotency_keys": Belongs(user_in_key="scope"),
    },
    archive_revision="billing_archive",
)

MOVES: dict[str, Move] = {move.name: move for move in (BILLING,)}
