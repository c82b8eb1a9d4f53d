"""The billing HTTP API: parse, call a service, let errors map themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.views import MethodView

from monolith.billing import services
from monolith.billing.domain import Invoice, Payment, Plan, Subscription
from monolith.billing.pagination import ListQuery
from monolith.billing.repository import BillingUnitOfWork
from monolith.billing.schemas import (
    LIST_HEADERS,
    IdempotencyHeaderSchema,
    InvoiceCreateSchema,
    InvoiceQuerySchema,
    InvoiceSchema,
    PaymentCreateSchema,
    PaymentSchema,
    PlanCreateSchema,
    PlanQuerySchema,
    PlanSchema,
    SubscriptionCreateSchema,
    SubscriptionQuerySchema,
    SubscriptionSchema,
)
from servicekit.idempotency import IdempotencyKeys, fingerprint
from servicekit.ownership import OwnershipGuard, acting_scope
from servicekit.web import ServiceBlueprint as Blueprint
from servicekit.web import idempotent_response


def create_blueprint(
    uow: Callable[[], BillingUnitOfWork],
    read_uow: Callable[[], BillingUnitOfWork],
    users: services.UserDirectory,
    idempotency_keys: IdempotencyKeys,
    ownership: OwnershipGuard,
) -> Blueprint:
    """``read_uow`` serves the GETs: it never takes SQLite's write lock, nor opens
    a transaction on PostgreSQL (see ``billing_read_uow`` in bootstrap.py).

    The lists page by cursor or by number (:mod:`pagination`) through their
    query schemas rather than flask-smorest's ``@paginate``, which can only
    answer page numbers with a count of every row.
    """
    blp = Blueprint("billing", __name__, url_prefix="/billing", description="Billing")
    # Before any view, so before an idempotency key is reserved: a refusal
    # (409 not_owner, 503 ownership_moving) is never stored as a key's reply.
    ownership.protect(blp)

    @blp.route("/plans")
    class Plans(MethodView):
        @blp.arguments(PlanQuerySchema, location="query")
        @blp.response(200, PlanSchema(many=True), headers=LIST_HEADERS)
        def get(self, query: ListQuery) -> tuple[list[Plan], dict[str, str]]:
            """List plans, oldest first"""
            page = services.list_plans(read_uow(), query.page)
            return page.items, query.headers(page)

        @blp.arguments(PlanCreateSchema)
        @blp.response(201, PlanSchema)
        @blp.alt_response(409, description="The plan code is taken")
        def post(self, data: dict[str, Any]) -> Plan:
            """Create a plan"""
            return services.create_plan(uow(), **{**data, "interval": data["interval"].value})

    @blp.route("/plans/<uuid:plan_id>")
    class PlanById(MethodView):
        @blp.response(200, PlanSchema)
        @blp.alt_response(404, description="No such plan")
        def get(self, plan_id: Any) -> Plan:
            """Get a plan"""
            return services.get_plan(read_uow(), str(plan_id))

    @blp.route("/subscriptions")
    class Subscriptions(MethodView):
        @blp.arguments(SubscriptionQuerySchema, location="query")
        @blp.response(200, SubscriptionSchema(many=True), headers=LIST_HEADERS)
        def get(self, query: ListQuery) -> tuple[list[Subscription], dict[str, str]]:
            """List subscriptions, oldest first, filtered by user and status"""
            page = services.list_subscriptions(read_uow(), query.page, **query.filters)
            return page.items, query.headers(page)

        @blp.arguments(SubscriptionCreateSchema)
        @blp.response(201, SubscriptionSchema)
        @blp.alt_response(404, description="No such plan")
        @blp.alt_response(409, description="Already subscribed, or the user is deactivated")
        @blp.alt_response(422, description="No such user")
        @blp.alt_response(503, description="Users cannot be asked right now; nothing was written")
        def post(self, data: dict[str, Any]) -> Subscription:
            """Subscribe a user to a plan"""
            return services.subscribe(
                uow(), users, user_id=str(data["user_id"]), plan_id=str(data["plan_id"])
            )

    @blp.route("/subscriptions/<uuid:subscription_id>")
    class SubscriptionById(MethodView):
        @blp.response(200, SubscriptionSchema)
        @blp.alt_response(404, description="No such subscription")
        def get(self, subscription_id: Any) -> Subscription:
            """Get a subscription"""
            return services.get_subscription(read_uow(), str(subscription_id))

    @blp.route("/subscriptions/<uuid:subscription_id>/cancel")
    class SubscriptionCancellation(MethodView):
        @blp.response(200, SubscriptionSchema)
        @blp.alt_response(404, description="No such subscription")
        @blp.alt_response(409, description="Already cancelled")
        def post(self, subscription_id: Any) -> Subscription:
            """Cancel a subscription"""
            return services.cancel_subscription(uow(), str(subscription_id))

    @blp.route("/invoices")
    class Invoices(MethodView):
        @blp.arguments(InvoiceQuerySchema, location="query")
        @blp.response(200, InvoiceSchema(many=True), headers=LIST_HEADERS)
        def get(self, query: ListQuery) -> tuple[list[Invoice], dict[str, str]]:
            """List invoices, newest first, filtered by user, subscription and status"""
            page = services.list_invoices(read_uow(), query.page, **query.filters)
            return page.items, query.headers(page)

        @blp.arguments(InvoiceCreateSchema)
        @blp.response(201, InvoiceSchema)
        @blp.alt_response(404, description="No such subscription")
        @blp.alt_response(409, description="The subscription is cancelled")
        def post(self, data: dict[str, Any]) -> Invoice:
            """Invoice a subscription's next period (open, or draft when asked)"""
            return services.create_invoice(
                uow(), subscription_id=str(data["subscription_id"]), draft=data["draft"]
            )

    @blp.route("/invoices/<uuid:invoice_id>")
    class InvoiceById(MethodView):
        @blp.response(200, InvoiceSchema)
        @blp.alt_response(404, description="No such invoice")
        def get(self, invoice_id: Any) -> Invoice:
            """Get an invoice"""
            return services.get_invoice(read_uow(), str(invoice_id))

    @blp.route("/invoices/<uuid:invoice_id>/issue")
    class InvoiceIssue(MethodView):
        @blp.response(200, InvoiceSchema)
        @blp.alt_response(404, description="No such invoice")
        @blp.alt_response(409, description="The invoice is not a draft")
        def post(self, invoice_id: Any) -> Invoice:
            """Issue a draft invoice"""
            return services.issue_invoice(uow(), str(invoice_id))

    @blp.route("/invoices/<uuid:invoice_id>/void")
    class InvoiceVoid(MethodView):
        @blp.response(200, InvoiceSchema)
        @blp.alt_response(404, description="No such invoice")
        @blp.alt_response(409, description="The invoice is paid, void or partly paid")
        def post(self, invoice_id: Any) -> Invoice:
            """Void an unpaid invoice"""
            return services.void_invoice(uow(), str(invoice_id))

    @blp.route("/invoices/<uuid:invoice_id>/payments")
    class InvoicePayments(MethodView):
        @blp.response(200, PaymentSchema(many=True))
        @blp.alt_response(404, description="No such invoice")
        def get(self, invoice_id: Any) -> list[Payment]:
            """List an invoice's payments"""
            return services.list_payments(read_uow(), str(invoice_id))

        @blp.arguments(IdempotencyHeaderSchema, location="headers")
        @blp.arguments(PaymentCreateSchema)
        @blp.response(201, PaymentSchema)
        @blp.alt_response(404, description="No such invoice")
        @blp.alt_response(409, description="Invoice not open, or same key still in flight")
        @blp.alt_response(422, description="Overpayment, wrong currency, or key reused")
        def post(self, headers: dict[str, Any], data: dict[str, Any], invoice_id: Any) -> Any:
            """Pay an invoice, partly or fully. Replays with the same Idempotency-Key
            return the first reply."""
            return idempotent_response(
                idempotency_keys,
                # The acting user's: a key moves with its user's records.
                scope=acting_scope("billing.payments"),
                key=headers["idempotency_key"],
                request_fingerprint=fingerprint(str(invoice_id), data),
                uow=uow(),
                execute=lambda unit: services.record_payment(unit, str(invoice_id), **data),
                status=201,
                schema=PaymentSchema(),
            )

    return blp
