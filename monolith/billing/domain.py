"""Billing's rules and errors. Pure Python: no Flask, no SQLAlchemy.

Money is an integer count of minor units (cents) with an ISO 4217 currency;
it is never a float.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import enum
from typing import Generic, Protocol, TypeVar

from servicekit.errors import Conflict, NotFound, RuleViolated


class Interval(enum.StrEnum):
    MONTH = "month"
    YEAR = "year"


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


class InvoiceStatus(enum.StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"


# -- errors -------------------------------------------------------------------


class PlanNotFound(NotFound):
    def __init__(self, plan_id: str) -> None:
        super().__init__(f"plan {plan_id} does not exist", plan_id=plan_id)


class SubscriptionNotFound(NotFound):
    def __init__(self, subscription_id: str) -> None:
        super().__init__(
            f"subscription {subscription_id} does not exist", subscription_id=subscription_id
        )


class InvoiceNotFound(NotFound):
    def __init__(self, invoice_id: str) -> None:
        super().__init__(f"invoice {invoice_id} does not exist", invoice_id=invoice_id)


class PlanCodeTaken(Conflict):
    code = "plan_code_taken"

    def __init__(self, code: str) -> None:
        super().__init__(f"a plan with code {code!r} already exists", plan_code=code)


class UnknownUser(RuleViolated):
    code = "unknown_user"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} does not exist", user_id=user_id)


class InactiveUser(Conflict):
    code = "user_inactive"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} is deactivated and cannot subscribe", user_id=user_id)


class AlreadySubscribed(Conflict):
    code = "already_subscribed"

    def __init__(self, user_id: str, plan_id: str) -> None:
        super().__init__(
            f"user {user_id} already has an active subscription to plan {plan_id}",
            user_id=user_id,
            plan_id=plan_id,
        )


class SubscriptionNotActive(Conflict):
    code = "subscription_not_active"

    def __init__(self, subscription_id: str) -> None:
        super().__init__(
            f"subscription {subscription_id} is cancelled", subscription_id=subscription_id
        )


class InvalidInvoiceTransition(Conflict):
    code = "invalid_invoice_transition"

    def __init__(self, invoice_id: str, status: InvoiceStatus, action: str) -> None:
        super().__init__(
            f"invoice {invoice_id} is {status.value}: it cannot be {action}",
            invoice_id=invoice_id,
            status=status.value,
        )


class CurrencyMismatch(RuleViolated):
    code = "currency_mismatch"

    def __init__(self, expected: str, given: str) -> None:
        super().__init__(
            f"the invoice is in {expected}, the payment in {given}",
            expected=expected,
            given=given,
        )


class Overpayment(RuleViolated):
    code = "overpayment"

    def __init__(self, outstanding_minor: int, amount_minor: int) -> None:
        super().__init__(
            f"payment of {amount_minor} exceeds the {outstanding_minor} still owed",
            outstanding_minor=outstanding_minor,
            amount_minor=amount_minor,
        )


# -- rules ----------------------------------------------------------------------


def add_interval(start: dt.date, interval: Interval) -> dt.date:
    """The day one interval after ``start``; Jan 31 + 1 month is Feb 28/29."""
    months = 1 if interval is Interval.MONTH else 12
    year, month_index = divmod(start.month - 1 + months, 12)
    year += start.year
    month = month_index + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return dt.date(year, month, day)


@dataclasses.dataclass
class Plan:
    id: str
    code: str
    name: str
    price_minor: int
    currency: str
    interval: Interval
    created_at: dt.datetime


@dataclasses.dataclass
class Subscription:
    id: str
    user_id: str
    plan_id: str
    status: SubscriptionStatus
    started_at: dt.datetime
    created_at: dt.datetime
    cancelled_at: dt.datetime | None = None

    def cancel(self, now: dt.datetime) -> None:
        if self.status is SubscriptionStatus.CANCELLED:
            raise SubscriptionNotActive(self.id)
        self.status = SubscriptionStatus.CANCELLED
        self.cancelled_at = now

    def require_active(self) -> None:
        if self.status is not SubscriptionStatus.ACTIVE:
            raise SubscriptionNotActive(self.id)


@dataclasses.dataclass
class Payment:
    id: str
    invoice_id: str
    amount_minor: int
    currency: str
    created_at: dt.datetime


@dataclasses.dataclass
class Invoice:
    id: str
    subscription_id: str
    user_id: str
    amount_minor: int
    currency: str
    period_start: dt.date
    period_end: dt.date
    status: InvoiceStatus
    amount_paid_minor: int
    created_at: dt.datetime
    issued_at: dt.datetime | None = None
    paid_at: dt.datetime | None = None
    voided_at: dt.datetime | None = None

    @property
    def outstanding_minor(self) -> int:
        return self.amount_minor - self.amount_paid_minor

    def issue(self, now: dt.datetime) -> None:
        if self.status is not InvoiceStatus.DRAFT:
            raise InvalidInvoiceTransition(self.id, self.status, "issued")
        self.status = InvoiceStatus.OPEN
        self.issued_at = now

    def void(self, now: dt.datetime) -> None:
        if self.status not in (InvoiceStatus.DRAFT, InvoiceStatus.OPEN) or self.amount_paid_minor:
            raise InvalidInvoiceTransition(self.id, self.status, "voided")
        self.status = InvoiceStatus.VOID
        self.voided_at = now

    def pay(
        self, *, payment_id: str, amount_minor: int, currency: str, now: dt.datetime
    ) -> Payment:
        """Apply a payment; the invoice becomes paid when nothing is owed."""
        if self.status is not InvoiceStatus.OPEN:
            raise InvalidInvoiceTransition(self.id, self.status, "paid")
        if currency != self.currency:
            raise CurrencyMismatch(self.currency, currency)
        if amount_minor > self.outstanding_minor:
            raise Overpayment(self.outstanding_minor, amount_minor)
        self.amount_paid_minor += amount_minor
        if self.outstanding_minor == 0:
            self.status = InvoiceStatus.PAID
            self.paid_at = now
        return Payment(
            id=payment_id,
            invoice_id=self.id,
            amount_minor=amount_minor,
            currency=currency,
            created_at=now,
        )


# -- lists ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Position:
    """A place in a list: the sort key of one item. Lists are ordered by
    ``(created_at, id)`` — both never change once written, and ``id`` is unique —
    so a position stays where it is whatever is inserted around it."""

    created_at: dt.datetime
    id: str


class Listed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> dt.datetime: ...


T = TypeVar("T", bound=Listed)


@dataclasses.dataclass(frozen=True)
class PageRequest:
    """Which page of a list to read: the ``size`` items after ``after`` (keyset),
    or after skipping ``offset`` items (page numbers: its cost grows with the
    offset). ``count`` asks for the total as well, which costs a scan."""

    size: int
    after: Position | None = None
    offset: int = 0
    count: bool = False


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool
    total: int | None = None

    @property
    def last(self) -> Position | None:
        """Where the next page starts after, or None if there is none."""
        if not (self.has_more and self.items):
            return None
        return Position(self.items[-1].created_at, self.items[-1].id)
