"""Billing's rules, with no database and no HTTP."""

from __future__ import annotations

import datetime as dt

import pytest

from monolith.billing.domain import (
    CurrencyMismatch,
    Interval,
    InvalidInvoiceTransition,
    Invoice,
    InvoiceStatus,
    Overpayment,
    Subscription,
    SubscriptionNotActive,
    SubscriptionStatus,
    add_interval,
)

NOW = dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)


def an_invoice(amount: int = 2_500, status: InvoiceStatus = InvoiceStatus.OPEN) -> Invoice:
    return Invoice(
        id="inv",
        subscription_id="sub",
        user_id="u",
        amount_minor=amount,
        currency="EUR",
        period_start=dt.date(2026, 1, 1),
        period_end=dt.date(2026, 2, 1),
        status=status,
        amount_paid_minor=0,
        created_at=NOW,
    )


@pytest.mark.parametrize(
    ("start", "interval", "end"),
    [
        (dt.date(2026, 1, 15), Interval.MONTH, dt.date(2026, 2, 15)),
        (dt.date(2026, 1, 31), Interval.MONTH, dt.date(2026, 2, 28)),
        (dt.date(2028, 1, 31), Interval.MONTH, dt.date(2028, 2, 29)),
        (dt.date(2026, 12, 5), Interval.MONTH, dt.date(2027, 1, 5)),
        (dt.date(2028, 2, 29), Interval.YEAR, dt.date(2029, 2, 28)),
    ],
)
def test_periods_end_one_interval_later_clamped_to_the_month(start, interval, end):
    assert add_interval(start, interval) == end


def test_a_partial_payment_leaves_the_invoice_open():
    invoice = an_invoice(2_500)

    payment = invoice.pay(payment_id="p1", amount_minor=1_000, currency="EUR", now=NOW)

    assert payment.amount_minor == 1_000
    assert invoice.status is InvoiceStatus.OPEN
    assert invoice.outstanding_minor == 1_500


def test_the_last_payment_makes_the_invoice_paid():
    invoice = an_invoice(2_500)
    invoice.pay(payment_id="p1", amount_minor=1_000, currency="EUR", now=NOW)

    invoice.pay(payment_id="p2", amount_minor=1_500, currency="EUR", now=NOW)

    assert invoice.status is InvoiceStatus.PAID
    assert invoice.paid_at == NOW
    assert invoice.outstanding_minor == 0


def test_overpayment_is_refused_and_changes_nothing():
    invoice = an_invoice(2_500)

    with pytest.raises(Overpayment):
        invoice.pay(payment_id="p", amount_minor=2_501, currency="EUR", now=NOW)

    assert invoice.amount_paid_minor == 0


def test_a_payment_in_another_currency_is_refused():
    with pytest.raises(CurrencyMismatch):
        an_invoice().pay(payment_id="p", amount_minor=1, currency="USD", now=NOW)


@pytest.mark.parametrize("status", [InvoiceStatus.DRAFT, InvoiceStatus.PAID, InvoiceStatus.VOID])
def test_only_open_invoices_take_payments(status):
    with pytest.raises(InvalidInvoiceTransition):
        an_invoice(status=status).pay(payment_id="p", amount_minor=1, currency="EUR", now=NOW)


def test_a_partly_paid_invoice_cannot_be_voided():
    invoice = an_invoice()
    invoice.pay(payment_id="p", amount_minor=1, currency="EUR", now=NOW)

    with pytest.raises(InvalidInvoiceTransition):
        invoice.void(NOW)


def test_only_a_draft_is_issued():
    draft = an_invoice(status=InvoiceStatus.DRAFT)
    draft.issue(NOW)

    assert draft.status is InvoiceStatus.OPEN
    with pytest.raises(InvalidInvoiceTransition):
        draft.issue(NOW)


def test_a_subscription_is_cancelled_once():
    subscription = Subscription(
        id="s",
        user_id="u",
        plan_id="p",
        status=SubscriptionStatus.ACTIVE,
        started_at=NOW,
        created_at=NOW,
    )
    subscription.cancel(NOW)

    assert subscription.status is SubscriptionStatus.CANCELLED
    with pytest.raises(SubscriptionNotActive):
        subscription.cancel(NOW)
