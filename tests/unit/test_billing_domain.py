"""Billing's rules, with no database and no HTTP — in both copies of billing.

The monolith's ``monolith.billing.domain`` and the service's
``extracted.billing_service.billing.domain`` must keep the same rules while
data moves between them; every test here runs against each (the ``billing``
fixture), so a rule changed in one copy only fails here.
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
from types import ModuleType

import pytest

#: The two copies of billing's domain rules, by the deployable that runs them.
DOMAIN_COPIES = {
    "monolith": "monolith.billing.domain",
    "service": "extracted.billing_service.billing.domain",
}

NOW = dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)


@pytest.fixture(params=sorted(DOMAIN_COPIES))
def billing(request: pytest.FixtureRequest) -> ModuleType:
    """One copy of billing's domain module: the monolith's, then the service's."""
    return importlib.import_module(DOMAIN_COPIES[request.param])


def public_names(module: ModuleType) -> set[str]:
    """What a domain module defines itself (not what it imports)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }


def test_both_copies_are_distinct_and_define_the_same_names():
    monolith, service = (importlib.import_module(DOMAIN_COPIES[s]) for s in ("monolith", "service"))

    assert monolith is not service
    assert {"Invoice", "Subscription", "add_interval"} <= public_names(monolith)
    assert public_names(service) == public_names(monolith)
    for name in sorted(public_names(monolith)):
        mine, theirs = getattr(monolith, name), getattr(service, name)
        if callable(mine) and not isinstance(mine, type):
            assert inspect.signature(theirs) == inspect.signature(mine), name


def an_invoice(billing: ModuleType, amount: int = 2_500, status: str = "open"):  # type: ignore[no-untyped-def]
    return billing.Invoice(
        id="inv",
        subscription_id="sub",
        user_id="u",
        amount_minor=amount,
        currency="EUR",
        period_start=dt.date(2026, 1, 1),
        period_end=dt.date(2026, 2, 1),
        status=billing.InvoiceStatus(status),
        amount_paid_minor=0,
        created_at=NOW,
    )


@pytest.mark.parametrize(
    ("start", "interval", "end"),
    [
        (dt.date(2026, 1, 15), "month", dt.date(2026, 2, 15)),
        (dt.date(2026, 1, 31), "month", dt.date(2026, 2, 28)),
        (dt.date(2028, 1, 31), "month", dt.date(2028, 2, 29)),
        (dt.date(2026, 12, 5), "month", dt.date(2027, 1, 5)),
        (dt.date(2028, 2, 29), "year", dt.date(2029, 2, 28)),
    ],
)
def test_periods_end_one_interval_later_clamped_to_the_month(billing, start, interval, end):
    assert billing.add_interval(start, billing.Interval(interval)) == end


def test_a_partial_payment_leaves_the_invoice_open(billing):
    invoice = an_invoice(billing, 2_500)

    payment = invoice.pay(payment_id="p1", amount_minor=1_000, currency="EUR", now=NOW)

    assert payment.amount_minor == 1_000
    assert invoice.status is billing.InvoiceStatus.OPEN
    assert invoice.outstanding_minor == 1_500


def test_the_last_payment_makes_the_invoice_paid(billing):
    invoice = an_invoice(billing, 2_500)
    invoice.pay(payment_id="p1", amount_minor=1_000, currency="EUR", now=NOW)

    invoice.pay(payment_id="p2", amount_minor=1_500, currency="EUR", now=NOW)

    assert invoice.status is billing.InvoiceStatus.PAID
    assert invoice.paid_at == NOW
    assert invoice.outstanding_minor == 0


def test_overpayment_is_refused_and_changes_nothing(billing):
    invoice = an_invoice(billing, 2_500)

    with pytest.raises(billing.Overpayment):
        invoice.pay(payment_id="p", amount_minor=2_501, currency="EUR", now=NOW)

    assert invoice.amount_paid_minor == 0


def test_a_payment_in_another_currency_is_refused(billing):
    with pytest.raises(billing.CurrencyMismatch):
        an_invoice(billing).pay(payment_id="p", amount_minor=1, currency="USD", now=NOW)


@pytest.mark.parametrize("status", ["draft", "paid", "void"])
def test_only_open_invoices_take_payments(billing, status):
    with pytest.raises(billing.InvalidInvoiceTransition):
        an_invoice(billing, status=status).pay(
            payment_id="p", amount_minor=1, currency="EUR", now=NOW
        )


def test_a_partly_paid_invoice_cannot_be_voided(billing):
    invoice = an_invoice(billing)
    invoice.pay(payment_id="p", amount_minor=1, currency="EUR", now=NOW)

    with pytest.raises(billing.InvalidInvoiceTransition):
        invoice.void(NOW)


def test_only_a_draft_is_issued(billing):
    draft = an_invoice(billing, status="draft")
    draft.issue(NOW)

    assert draft.status is billing.InvoiceStatus.OPEN
    with pytest.raises(billing.InvalidInvoiceTransition):
        draft.issue(NOW)


def test_a_subscription_is_cancelled_once(billing):
    subscription = billing.Subscription(
        id="s",
        user_id="u",
        plan_id="p",
        status=billing.SubscriptionStatus.ACTIVE,
        started_at=NOW,
        created_at=NOW,
    )
    subscription.cancel(NOW)

    assert subscription.status is billing.SubscriptionStatus.CANCELLED
    with pytest.raises(billing.SubscriptionNotActive):
        subscription.cancel(NOW)
