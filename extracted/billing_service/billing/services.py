"""Billing's use cases. Each takes a unit of work and commits it.

Moved from the monolith's billing module with one change: whether a user
exists and is active is asked of a :class:`UserDirectory` that is now the
monolith's users API over HTTP (:mod:`extracted.billing_service.users`).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from sqlalchemy.exc import IntegrityError

from extracted.billing_service.billing.domain import (
    AlreadySubscribed,
    InactiveUser,
    Interval,
    Invoice,
    InvoiceNotFound,
    InvoiceStatus,
    Page,
    PageRequest,
    Payment,
    Plan,
    PlanCodeTaken,
    PlanNotFound,
    Subscription,
    SubscriptionNotFound,
    SubscriptionStatus,
    UnknownUser,
    add_interval,
)
from extracted.billing_service.billing.events import (
    InvoiceIssued,
    InvoicePaid,
    SubscriptionCancelled,
)
from extracted.billing_service.billing.repository import BillingUnitOfWork
from servicekit.db import utcnow
from servicekit.ids import new_id


class UserInfo(Protocol):
    @property
    def active(self) -> bool: ...


class UserDirectory(Protocol):
    """What billing needs to know about users. Raises
    :class:`~servicekit.errors.DependencyUnavailable` when it cannot be asked."""

    def find_user(self, user_id: str) -> UserInfo | None: ...


# -- plans ------------------------------------------------------------------------


def create_plan(
    uow: BillingUnitOfWork, *, code: str, name: str, price_minor: int, currency: str, interval: str
) -> Plan:
    with uow:
        if uow.plans.code_in_use(code):
            raise PlanCodeTaken(code)
        plan = Plan(
            id=new_id(),
            code=code,
            name=name,
            price_minor=price_minor,
            currency=currency,
            interval=Interval(interval),
            created_at=utcnow(),
        )
        uow.plans.add(plan)
        uow.commit()
        return plan


def get_plan(uow: BillingUnitOfWork, plan_id: str) -> Plan:
    with uow:
        plan = uow.plans.get(plan_id)
    if plan is None:
        raise PlanNotFound(plan_id)
    return plan


def list_plans(uow: BillingUnitOfWork, page: PageRequest) -> Page[Plan]:
    with uow:
        return uow.plans.list(page)


# -- subscriptions ----------------------------------------------------------------


def subscribe(
    uow: BillingUnitOfWork, users: UserDirectory, *, user_id: str, plan_id: str
) -> Subscription:
    # Ask users before opening the transaction: no lock is held while waiting.
    user = users.find_user(user_id)
    if user is None:
        raise UnknownUser(user_id)
    if not user.active:
        raise InactiveUser(user_id)
    with uow:
        if uow.plans.get(plan_id) is None:
            raise PlanNotFound(plan_id)
        if uow.subscriptions.active_for(user_id, plan_id):
            raise AlreadySubscribed(user_id, plan_id)
        now = utcnow()
        subscription = Subscription(
            id=new_id(),
            user_id=user_id,
            plan_id=plan_id,
            status=SubscriptionStatus.ACTIVE,
            started_at=now,
            created_at=now,
        )
        uow.subscriptions.add(subscription)
        try:
            uow.commit()
        except IntegrityError:
            # A concurrent request subscribed first; the partial unique index said so.
            raise AlreadySubscribed(user_id, plan_id) from None
        return subscription


def get_subscription(uow: BillingUnitOfWork, subscription_id: str) -> Subscription:
    with uow:
        subscription = uow.subscriptions.get(subscription_id)
    if subscription is None:
        raise SubscriptionNotFound(subscription_id)
    return subscription


def list_subscriptions(
    uow: BillingUnitOfWork,
    page: PageRequest,
    *,
    user_id: str | None = None,
    status: str | None = None,
) -> Page[Subscription]:
    with uow:
        return uow.subscriptions.list(page, user_id=user_id, status=status)


def cancel_subscription(
    uow: BillingUnitOfWork, subscription_id: str, *, reason: str = "requested"
) -> Subscription:
    with uow:
        subscription = uow.subscriptions.get(subscription_id, for_update=True)
        if subscription is None:
            raise SubscriptionNotFound(subscription_id)
        _cancel(uow, subscription, reason)
        uow.commit()
        return subscription


def cancel_all_for_user(uow: BillingUnitOfWork, user_id: str, *, reason: str) -> int:
    """Cancel every active subscription of a user inside the caller's transaction."""
    cancelled = 0
    for subscription in uow.subscriptions.active_for(user_id):
        _cancel(uow, subscription, reason)
        cancelled += 1
    return cancelled


def _cancel(uow: BillingUnitOfWork, subscription: Subscription, reason: str) -> None:
    subscription.cancel(utcnow())
    uow.subscriptions.save(subscription)
    uow.publish(
        SubscriptionCancelled(
            subscription_id=subscription.id,
            user_id=subscription.user_id,
            plan_id=subscription.plan_id,
            reason=reason,
        )
    )


# -- invoices ---------------------------------------------------------------------


def create_invoice(uow: BillingUnitOfWork, *, subscription_id: str, draft: bool = False) -> Invoice:
    """Invoice the subscription's next period that has no invoice yet."""
    with uow:
        subscription = uow.subscriptions.get(subscription_id, for_update=True)
        if subscription is None:
            raise SubscriptionNotFound(subscription_id)
        subscription.require_active()
        plan = uow.plans.get(subscription.plan_id)
        assert plan is not None, "a subscription's plan cannot disappear"
        period_start = uow.invoices.last_period_end(subscription.id) or _day(
            subscription.started_at
        )
        now = utcnow()
        invoice = Invoice(
            id=new_id(),
            subscription_id=subscription.id,
            user_id=subscription.user_id,
            amount_minor=plan.price_minor,
            currency=plan.currency,
            period_start=period_start,
            period_end=add_interval(period_start, plan.interval),
            status=InvoiceStatus.DRAFT,
            amount_paid_minor=0,
            created_at=now,
        )
        if not draft:
            invoice.issue(now)
        uow.invoices.add(invoice)
        if not draft:
            _announce_issued(uow, invoice)
        uow.commit()
        return invoice


def issue_invoice(uow: BillingUnitOfWork, invoice_id: str) -> Invoice:
    with uow:
        invoice = _invoice_for_update(uow, invoice_id)
        invoice.issue(utcnow())
        uow.invoices.save(invoice)
        _announce_issued(uow, invoice)
        uow.commit()
        return invoice


def void_invoice(uow: BillingUnitOfWork, invoice_id: str) -> Invoice:
    with uow:
        invoice = _invoice_for_update(uow, invoice_id)
        invoice.void(utcnow())
        uow.invoices.save(invoice)
        uow.commit()
        return invoice


def get_invoice(uow: BillingUnitOfWork, invoice_id: str) -> Invoice:
    with uow:
        invoice = uow.invoices.get(invoice_id)
    if invoice is None:
        raise InvoiceNotFound(invoice_id)
    return invoice


def list_invoices(
    uow: BillingUnitOfWork,
    page: PageRequest,
    *,
    user_id: str | None = None,
    status: str | None = None,
    subscription_id: str | None = None,
) -> Page[Invoice]:
    """Newest first."""
    with uow:
        return uow.invoices.list(
            page, user_id=user_id, status=status, subscription_id=subscription_id
        )


# -- payments ---------------------------------------------------------------------


def record_payment(
    uow: BillingUnitOfWork, invoice_id: str, *, amount_minor: int, currency: str
) -> Payment:
    with uow:
        invoice = _invoice_for_update(uow, invoice_id)
        payment = invoice.pay(
            payment_id=new_id(), amount_minor=amount_minor, currency=currency, now=utcnow()
        )
        uow.payments.add(payment)
        uow.invoices.save(invoice)
        if invoice.status is InvoiceStatus.PAID:
            assert invoice.paid_at is not None
            uow.publish(
                InvoicePaid(
                    invoice_id=invoice.id,
                    user_id=invoice.user_id,
                    amount_minor=invoice.amount_minor,
                    currency=invoice.currency,
                    paid_at=invoice.paid_at.isoformat(),
                )
            )
        uow.commit()
        return payment


def list_payments(uow: BillingUnitOfWork, invoice_id: str) -> list[Payment]:
    with uow:
        if uow.invoices.get(invoice_id) is None:
            raise InvoiceNotFound(invoice_id)
        return uow.payments.for_invoice(invoice_id)


def _invoice_for_update(uow: BillingUnitOfWork, invoice_id: str) -> Invoice:
    invoice = uow.invoices.get(invoice_id, for_update=True)
    if invoice is None:
        raise InvoiceNotFound(invoice_id)
    return invoice


def _announce_issued(uow: BillingUnitOfWork, invoice: Invoice) -> None:
    uow.publish(
        InvoiceIssued(
            invoice_id=invoice.id,
            subscription_id=invoice.subscription_id,
            user_id=invoice.user_id,
            amount_minor=invoice.amount_minor,
            currency=invoice.currency,
            period_start=invoice.period_start.isoformat(),
            period_end=invoice.period_end.isoformat(),
        )
    )


def _day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(dt.UTC).date()
