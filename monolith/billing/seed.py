"""Demo data for the billing module: plans, one subscription per user and a
history of monthly invoices, most of them paid. Inserted in bulk."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from sqlalchemy.orm import Session

from monolith.billing import orm
from monolith.billing.domain import Interval, InvoiceStatus, SubscriptionStatus, add_interval
from servicekit.db import utcnow
from servicekit.ids import new_id

PLANS = (
    ("starter", "Starter", 900, "EUR"),
    ("team", "Team", 4_900, "EUR"),
    ("business", "Business", 19_900, "EUR"),
)


def seed_billing(
    session: Session, user_ids: list[str], invoices: int, *, batch: int = 5_000
) -> None:
    now = utcnow()
    plan_ids = []
    for code, name, price, currency in PLANS:
        plan_ids.append(new_id())
        session.execute(
            orm.plans.insert().values(
                id=plan_ids[-1],
                code=f"{code}-{plan_ids[-1][:8]}",
                name=name,
                price_minor=price,
                currency=currency,
                interval=Interval.MONTH,
                created_at=now,
            )
        )
    if not user_ids:
        return
    started = now - dt.timedelta(days=3650)
    subscriptions: list[dict[str, Any]] = [
        {
            "id": new_id(),
            "user_id": user_id,
            "plan_id": plan_ids[n % len(plan_ids)],
            "status": SubscriptionStatus.ACTIVE,
            "started_at": started,
            "created_at": started,
            "cancelled_at": None,
        }
        for n, user_id in enumerate(user_ids)
    ]
    for first in range(0, len(subscriptions), batch):
        session.execute(orm.subscriptions.insert(), subscriptions[first : first + batch])
    prices = {plan_ids[n]: PLANS[n][2] for n in range(len(PLANS))}
    periods = {s["id"]: started.date() for s in subscriptions}
    rows: list[dict[str, Any]] = []
    payments: list[dict[str, Any]] = []
    cycle = itertools.cycle(subscriptions)
    statuses = (InvoiceStatus.PAID,) * 7 + (
        InvoiceStatus.OPEN,
        InvoiceStatus.VOID,
        InvoiceStatus.DRAFT,
    )
    for n in range(invoices):
        subscription = next(cycle)
        start = periods[subscription["id"]]
        end = periods[subscription["id"]] = add_interval(start, Interval.MONTH)
        status = statuses[n % len(statuses)]
        amount = prices[subscription["plan_id"]]
        created = dt.datetime.combine(start, dt.time(), dt.UTC)
        paid = status is InvoiceStatus.PAID
        rows.append(
            {
                "id": new_id(),
                "subscription_id": subscription["id"],
                "user_id": subscription["user_id"],
                "amount_minor": amount,
                "currency": "EUR",
                "period_start": start,
                "period_end": end,
                "status": status,
                "amount_paid_minor": amount if paid else 0,
                "created_at": created,
                "issued_at": None if status is InvoiceStatus.DRAFT else created,
                "paid_at": created if paid else None,
                "voided_at": created if status is InvoiceStatus.VOID else None,
            }
        )
        if paid:
            payments.append(
                {
                    "id": new_id(),
                    "invoice_id": rows[-1]["id"],
                    "amount_minor": amount,
                    "currency": "EUR",
                    "created_at": created,
                }
            )
        if len(rows) >= batch:
            _flush(session, rows, payments)
    _flush(session, rows, payments)


def _flush(
    session: Session, invoices: list[dict[str, Any]], payments: list[dict[str, Any]]
) -> None:
    if invoices:
        session.execute(orm.invoices.insert(), invoices)
    if payments:
        session.execute(orm.payments.insert(), payments)
    invoices.clear()
    payments.clear()
