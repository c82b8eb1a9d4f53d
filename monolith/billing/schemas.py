"""Request and response shapes of the billing API — the contract that the
extracted billing service must keep to the letter."""

from __future__ import annotations

from typing import Any, ClassVar

import marshmallow as ma
from marshmallow import validate

from monolith.billing.domain import Interval, InvoiceStatus, SubscriptionStatus
from monolith.billing.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_CURSOR_LENGTH,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    PAGINATION_HEADER,
    ListQuery,
)
from servicekit.idempotency import IDEMPOTENCY_KEY_HEADER, MAX_KEY_LENGTH

#: Amounts are integers of minor units; a sanity ceiling keeps them in range.
MAX_AMOUNT_MINOR = 10**12
CURRENCY = validate.Regexp(r"^[A-Z]{3}$", error="must be an ISO 4217 code such as EUR")


class ListQuerySchema(ma.Schema):
    """How a list is paged (see :mod:`pagination`); each list adds its filters.

    Loads into a :class:`~pagination.ListQuery`.
    """

    LIST: ClassVar[str]

    page_size = ma.fields.Integer(
        load_default=DEFAULT_PAGE_SIZE,
        validate=validate.Range(min=1, max=MAX_PAGE_SIZE),
        metadata={"description": "Items per page."},
    )
    cursor = ma.fields.String(
        validate=validate.Length(min=1, max=MAX_CURSOR_LENGTH),
        metadata={
            "description": "Where to continue: the `next_cursor` of the previous page's "
            f"`{PAGINATION_HEADER}` header. Opaque; bound to the list and its filters. "
            "Pages by cursor cost the same at any depth and never skip or repeat an item "
            "when items are added meanwhile."
        },
    )
    page = ma.fields.Integer(
        validate=validate.Range(min=1, max=MAX_PAGE),
        metadata={
            "description": "Page number, for clients that page by number (default 1). Costs "
            "more the deeper the page, and pages shift when items are added: prefer `cursor`. "
            "Not with `cursor`."
        },
    )
    include_total = ma.fields.Boolean(
        load_default=False,
        metadata={
            "description": "Also answer `total`, `total_pages` and `last_page`: this counts "
            "every matching item."
        },
    )

    @ma.validates_schema
    def _one_way_to_page(self, data: dict[str, Any], **_: Any) -> None:
        if "cursor" in data and "page" in data:
            raise ma.ValidationError("Give either cursor or page, not both.", "cursor")

    @ma.post_load
    def _to_list_query(self, data: dict[str, Any], **_: Any) -> ListQuery:
        return ListQuery.parse(self.LIST, data)


class PageHeaderSchema(ma.Schema):
    """The ``X-Pagination`` header of a billing list (a JSON object)."""

    page_size = ma.fields.Integer(required=True, metadata={"description": "Items per page."})
    has_more = ma.fields.Boolean(
        required=True, metadata={"description": "Whether another page follows."}
    )
    next_cursor = ma.fields.String(
        metadata={"description": "Send as `cursor` for the next page; absent on the last."}
    )
    page = ma.fields.Integer(metadata={"description": "Page number (when asked by number)."})
    first_page = ma.fields.Integer(metadata={"description": "1 (when asked by number)."})
    previous_page = ma.fields.Integer(metadata={"description": "Previous page number."})
    next_page = ma.fields.Integer(metadata={"description": "Next page number, if any."})
    total = ma.fields.Integer(metadata={"description": "Matching items (with include_total)."})
    total_pages = ma.fields.Integer(metadata={"description": "Pages (with include_total)."})
    last_page = ma.fields.Integer(metadata={"description": "Last page (with include_total)."})


#: The response headers every list documents.
LIST_HEADERS = {
    PAGINATION_HEADER: {
        "description": "Pagination: whether more follows and the cursor to it (JSON)",
        "schema": PageHeaderSchema,
    }
}


class PlanQuerySchema(ListQuerySchema):
    LIST = "plans"


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


class SubscriptionQuerySchema(ListQuerySchema):
    LIST = "subscriptions"

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


class InvoiceQuerySchema(ListQuerySchema):
    LIST = "invoices"

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
