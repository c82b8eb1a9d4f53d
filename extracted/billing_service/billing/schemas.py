"""Request and response shapes of the billing API — moved unchanged from the
monolith: the contract is the same to the letter (tests/contract proves it)."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from extracted.billing_service.billing.domain import Interval, InvoiceStatus, SubscriptionStatus
from servicekit.idempotency import IDEMPOTENCY_KEY_HEADER, MAX_KEY_LENGTH

#: Amounts are integers of minor units; a sanity ceiling keeps them in range.
MAX_AMOUNT_MINOR = 10**12
CURRENCY = validate.Regexp(r"^[A-Z]{3}$", error="must be an ISO 4217 code such as EUR")


class PlanCreateSchema(ma.Schema):
    code = ma.fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[a-z0-9][a-z0-9_-]{0,63}$", error="lowercase letters, digits, - and _, at most 64"
        ),
    )
    name = ma.fields.String(required=True, validate=validate.Length(min=1, max=200))
    price_minor = ma.fields.Integer(
        required=True, strict=True, validate=validate.Range(min=0, max=MAX_AMOUNT_MINOR)
    )
    currency = ma.fields.String(required=True, validate=CURRENCY)
    interval = ma.fields.Enum(Interval, by_value=True, required=True)


class PlanSchema(ma.Schema):
    id = ma.fields.String()
    code = ma.fields.String()
    name = ma.fields.String()
    price_minor = ma.fields.Integer()
    currency = ma.fields.String()
    interval = ma.fields.Enum(Interval, by_value=True)
    created_at = ma.fields.AwareDateTime()


class SubscriptionCreateSchema(ma.Schema):
    user_id = ma.fields.UUID(required=True)
    plan_id = ma.fields.UUID(required=True)


class SubscriptionQuerySchema(ma.Schema):
    user_id = ma.fields.UUID()
    status = ma.fields.Enum(SubscriptionStatus, by_value=True)


class SubscriptionSchema(ma.Schema):
    id = ma.fields.String()
    user_id = ma.fields.String()
    plan_id = ma.fields.String()
    status = ma.fields.Enum(SubscriptionStatus, by_value=True)
    started_at = ma.fields.AwareDateTime()
    created_at = ma.fields.AwareDateTime()
    cancelled_at = ma.fields.AwareDateTime(allow_none=True)


class InvoiceCreateSchema(ma.Schema):
    subscription_id = ma.fields.UUID(required=True)
    draft = ma.fields.Boolean(load_default=False)


class InvoiceQuerySchema(ma.Schema):
    user_id = ma.fields.UUID()
    subscription_id = ma.fields.UUID()
    status = ma.fields.Enum(InvoiceStatus, by_value=True)


class InvoiceSchema(ma.Schema):
    id = ma.fields.String()
    subscription_id = ma.fields.String()
    user_id = ma.fields.String()
    amount_minor = ma.fields.Integer()
    amount_paid_minor = ma.fields.Integer()
    outstanding_minor = ma.fields.Integer()
    currency = ma.fields.String()
    period_start = ma.fields.Date()
    period_end = ma.fields.Date()
    status = ma.fields.Enum(InvoiceStatus, by_value=True)
    created_at = ma.fields.AwareDateTime()
    issued_at = ma.fields.AwareDateTime(allow_none=True)
    paid_at = ma.fields.AwareDateTime(allow_none=True)
    voided_at = ma.fields.AwareDateTime(allow_none=True)


class PaymentCreateSchema(ma.Schema):
    amount_minor = ma.fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=MAX_AMOUNT_MINOR)
    )
    currency = ma.fields.String(required=True, validate=CURRENCY)


class IdempotencyHeaderSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # every other header is none of this schema's business

    idempotency_key = ma.fields.String(
        data_key=IDEMPOTENCY_KEY_HEADER,
        required=True,
        validate=validate.Length(min=1, max=MAX_KEY_LENGTH),
    )


class PaymentSchema(ma.Schema):
    id = ma.fields.String()
    invoice_id = ma.fields.String()
    amount_minor = ma.fields.Integer()
    currency = ma.fields.String()
    created_at = ma.fields.AwareDateTime()
