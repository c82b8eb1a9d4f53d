"""All SQL of the billing module, and its unit of work."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from extracted.billing_service.billing import orm
from extracted.billing_service.billing.domain import (
    Interval,
    Invoice,
    InvoiceStatus,
    Page,
    PageRequest,
    Payment,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from servicekit.db import UTCDateTime
from servicekit.uow import UnitOfWork


class _Repository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def _select_one(self, query: sa.Select[Any]) -> sa.Row[Any] | None:
        return self._session.execute(query).first()

    def _count(self, table: sa.Table, *conditions: sa.ColumnElement[bool]) -> int:
        query = sa.select(sa.func.count()).select_from(table).where(*conditions)
        return self._session.execute(query).scalar_one()

    def _page(
        self,
        table: sa.Table,
        conditions: list[sa.ColumnElement[bool]],
        request: PageRequest,
        *,
        newest_first: bool,
    ) -> tuple[Sequence[sa.Row[Any]], bool, int | None]:
        """One page of ``table`` in ``(created_at, id)`` order: its rows, whether
        more follow, and the total when asked for.

        Both sort columns run the same direction, so that one index on
        ``(created_at, id)`` (or ``(filter, created_at, id)``) is read in order,
        forwards or backwards, and the first rows are the answer: no sort, and
        with a position (keyset) no rows skipped either. One row more than the
        page tells whether another page follows, instead of counting them all.
        """
        key = sa.tuple_(table.c.created_at, table.c.id)
        where = list(conditions)
        if request.after is not None:
            after = sa.tuple_(
                sa.literal(request.after.created_at, UTCDateTime()),
                sa.literal(request.after.id, sa.String()),
            )
            where.append(key < after if newest_first else key > after)
        order = (table.c.created_at, table.c.id)
        query = (
            sa.select(table)
            .where(*where)
            .order_by(*(column.desc() for column in order) if newest_first else order)
            .offset(request.offset)
            .limit(request.size + 1)
        )
        rows = self._session.execute(query).all()
        total = self._count(table, *conditions) if request.count else None
        return rows[: request.size], len(rows) > request.size, total


class PlanRepository(_Repository):
    def add(self, plan: Plan) -> None:
        self._session.execute(orm.plans.insert().values(**dataclasses.asdict(plan)))

    def get(self, plan_id: str) -> Plan | None:
        row = self._select_one(sa.select(orm.plans).where(orm.plans.c.id == plan_id))
        return _plan(row) if row else None

    def code_in_use(self, code: str) -> bool:
        query = sa.select(orm.plans.c.id).where(orm.plans.c.code == code)
        return self._select_one(query) is not None

    def list(self, request: PageRequest) -> Page[Plan]:
        """Oldest first."""
        rows, has_more, total = self._page(orm.plans, [], request, newest_first=False)
        return Page([_plan(row) for row in rows], has_more, total)


class SubscriptionRepository(_Repository):
    def add(self, subscription: Subscription) -> None:
        self._session.execute(orm.subscriptions.insert().values(**dataclasses.asdict(subscription)))

    def save(self, subscription: Subscription) -> None:
        self._session.execute(
            orm.subscriptions.update()
            .where(orm.subscriptions.c.id == subscription.id)
            .values(status=subscription.status, cancelled_at=subscription.cancelled_at)
        )

    def get(self, subscription_id: str, *, for_update: bool = False) -> Subscription | None:
        query = sa.select(orm.subscriptions).where(orm.subscriptions.c.id == subscription_id)
        row = self._select_one(query.with_for_update() if for_update else query)
        return _subscription(row) if row else None

    def active_for(self, user_id: str, plan_id: str | None = None) -> list[Subscription]:
        s = orm.subscriptions
        query = sa.select(s).where(s.c.user_id == user_id, s.c.status == SubscriptionStatus.ACTIVE)
        if plan_id is not None:
            query = query.where(s.c.plan_id == plan_id)
        rows = self._session.execute(query.order_by(s.c.created_at).with_for_update()).all()
        return [_subscription(row) for row in rows]

    def list(
        self, request: PageRequest, *, user_id: str | None, status: str | None
    ) -> Page[Subscription]:
        """Oldest first."""
        conditions = _equal(orm.subscriptions, user_id=user_id, status=status)
        rows, has_more, total = self._page(
            orm.subscriptions, conditions, request, newest_first=False
        )
        return Page([_subscription(row) for row in rows], has_more, total)


class InvoiceRepository(_Repository):
    def add(self, invoice: Invoice) -> None:
        self._session.execute(orm.invoices.insert().values(**dataclasses.asdict(invoice)))

    def save(self, invoice: Invoice) -> None:
        values = dataclasses.asdict(invoice)
        del values["id"]
        self._session.execute(
            orm.invoices.update().where(orm.invoices.c.id == invoice.id).values(**values)
        )

    def get(self, invoice_id: str, *, for_update: bool = False) -> Invoice | None:
        query = sa.select(orm.invoices).where(orm.invoices.c.id == invoice_id)
        row = self._select_one(query.with_for_update() if for_update else query)
        return _invoice(row) if row else None

    def last_period_end(self, subscription_id: str) -> Any:
        i = orm.invoices
        query = sa.select(sa.func.max(i.c.period_end)).where(i.c.subscription_id == subscription_id)
        return self._session.execute(query).scalar_one()

    def list(
        self,
        request: PageRequest,
        *,
        user_id: str | None,
        status: str | None,
        subscription_id: str | None,
    ) -> Page[Invoice]:
        """Newest first."""
        conditions = _equal(
            orm.invoices, user_id=user_id, status=status, subscription_id=subscription_id
        )
        rows, has_more, total = self._page(orm.invoices, conditions, request, newest_first=True)
        return Page([_invoice(row) for row in rows], has_more, total)


class PaymentRepository(_Repository):
    def add(self, payment: Payment) -> None:
        self._session.execute(orm.payments.insert().values(**dataclasses.asdict(payment)))

    def for_invoice(self, invoice_id: str) -> list[Payment]:
        p = orm.payments
        query = sa.select(p).where(p.c.invoice_id == invoice_id).order_by(p.c.created_at, p.c.id)
        return [Payment(**row._mapping) for row in self._session.execute(query).all()]


def _equal(table: sa.Table, **filters: str | None) -> list[sa.ColumnElement[bool]]:
    return [table.c[name] == value for name, value in filters.items() if value is not None]


def _plan(row: sa.Row[Any]) -> Plan:
    return Plan(**{**row._mapping, "interval": Interval(row.interval)})


def _subscription(row: sa.Row[Any]) -> Subscription:
    return Subscription(**{**row._mapping, "status": SubscriptionStatus(row.status)})


def _invoice(row: sa.Row[Any]) -> Invoice:
    return Invoice(**{**row._mapping, "status": InvoiceStatus(row.status)})


class BillingUnitOfWork(UnitOfWork):
    plans: PlanRepository
    subscriptions: SubscriptionRepository
    invoices: InvoiceRepository
    payments: PaymentRepository

    def __enter__(self) -> BillingUnitOfWork:
        super().__enter__()
        self.plans = PlanRepository(self.session)
        self.subscriptions = SubscriptionRepository(self.session)
        self.invoices = InvoiceRepository(self.session)
        self.payments = PaymentRepository(self.session)
        return self
