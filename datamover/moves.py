"""What can be moved: a named set of tables, parents first, from one database
to another. The names of the two sides are what reports call them."""

from __future__ import annotations

import dataclasses

__all__ = ["BILLING", "MOVES", "Move"]


@dataclasses.dataclass(frozen=True)
class Move:
    name: str
    #: Copied in this order: a table after every table it refers to.
    tables: tuple[str, ...]
    source_side: str
    target_side: str


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
)

MOVES: dict[str, Move] = {move.name: move for move in (BILLING,)}
