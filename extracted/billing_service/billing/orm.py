"""The tables the billing service owns, in its own database.

The same tables as the monolith's billing module (same names, same
constraints): the data can move over as it is. User ids are plain values,
checked through the monolith's users API, never a constraint."""

from __future__ import annotations

import sqlalchemy as sa

from servicekit.db import UTCDateTime, new_metadata
from servicekit.idempotency import idempotency_table
from servicekit.inbox import inbox_table
from servicekit.outbox import outbox_table
from servicekit.ownership import ownership_table

metadata = new_metadata()

plans = sa.Table(
    "billing_plans",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("code", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price_minor", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("interval", sa.String(10), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("price_minor >= 0", name="price_not_negative"),
    # Lists read in (created_at, id) order straight off an index (repository._page).
    sa.Index("ix_billing_plans_created", "created_at", "id"),
)

subscriptions = sa.Table(
    "billing_subscriptions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("plan_id", sa.String(36), sa.ForeignKey("billing_plans.id"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("cancelled_at", UTCDateTime(), nullable=True),
    sa.Index("ix_billing_subscriptions_user", "user_id", "status"),
    # Lists read in (created_at, id) order straight off an index (repository._page).
    sa.Index("ix_billing_subscriptions_created", "created_at", "id"),
    # One active subscription per user and plan, even under concurrent requests.
    sa.Index(
        "uq_billing_subscriptions_active",
        "user_id",
        "plan_id",
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    ),
)

invoices = sa.Table(
    "billing_invoices",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "subscription_id", sa.String(36), sa.ForeignKey("billing_subscriptions.id"), nullable=False
    ),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("amount_minor", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("period_start", sa.Date(), nullable=False),
    sa.Column("period_end", sa.Date(), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("amount_paid_minor", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("issued_at", UTCDateTime(), nullable=True),
    sa.Column("paid_at", UTCDateTime(), nullable=True),
    sa.Column("voided_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("subscription_id", "period_start"),
    sa.CheckConstraint("amount_paid_minor <= amount_minor", name="not_overpaid"),
    # One index per way the list is filtered, each ending in the list's order
    # (created_at, id), read backwards for newest first: a page is a range of
    # one index whatever the filter and however deep (repository._page).
    sa.Index("ix_billing_invoices_created", "created_at", "id"),
    sa.Index("ix_billing_invoices_user_created", "user_id", "created_at", "id"),
    sa.Index("ix_billing_invoices_status_created", "status", "created_at", "id"),
)

payments = sa.Table(
    "billing_payments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("invoice_id", sa.String(36), sa.ForeignKey("billing_invoices.id"), nullable=False),
    sa.Column("amount_minor", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.Index("ix_billing_payments_invoice", "invoice_id", "created_at"),
)

outbox = outbox_table(metadata, "billing")
processed_events = inbox_table(metadata, "billing")
idempotency_keys = idempotency_table(metadata, "billing")
#: Who may write which records while the data mover moves them (the mover
#: writes it, the app only reads it; empty: this side owns everything).
ownership = ownership_table(metadata, "billing")
