"""Integration events the billing service publishes (unchanged: consumers
must not notice that the publisher moved).

They carry what a consumer needs (amounts, currency, periods) so that no
consumer has to call back into billing to act on them.
"""

from __future__ import annotations

import dataclasses

from servicekit.events import IntegrationEvent


@dataclasses.dataclass(frozen=True, kw_only=True)
class InvoiceIssued(IntegrationEvent):
    aggregate_field = "invoice_id"
    invoice_id: str
    subscription_id: str
    user_id: str
    amount_minor: int
    currency: str
    period_start: str
    period_end: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class InvoicePaid(IntegrationEvent):
    aggregate_field = "invoice_id"
    invoice_id: str
    user_id: str
    amount_minor: int
    currency: str
    paid_at: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubscriptionCancelled(IntegrationEvent):
    aggregate_field = "subscription_id"
    subscription_id: str
    user_id: str
    plan_id: str
    reason: str


PUBLISHED = (InvoiceIssued, InvoicePaid, SubscriptionCancelled)
