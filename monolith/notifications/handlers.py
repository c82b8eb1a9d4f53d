"""Notifications' reactions to users' and billing's integration events.

The event bus runs each handler in an open unit of work and commits it with
the inbox record (an event is turned into a message once). The recipient's
address comes from the users facade; everything else comes in the event.
"""

from __future__ import annotations

from monolith.billing.events import InvoiceIssued, InvoicePaid, SubscriptionCancelled
from monolith.notifications import domain, services
from monolith.notifications.domain import Kind
from monolith.notifications.repository import NotificationsUnitOfWork
from monolith.users.api import UsersFacade
from monolith.users.events import UserRegistered


class NotificationHandlers:
    def __init__(self, users: UsersFacade, sender: services.Sender) -> None:
        self._users = users
        self._sender = sender

    def on_user_registered(self, event: UserRegistered, uow: NotificationsUnitOfWork) -> None:
        services.notify(
            uow,
            self._sender,
            user_id=event.user_id,
            recipient=event.email,
            kind=Kind.WELCOME,
            message=domain.welcome(event.name),
            event_id=event.event_id,
        )

    def on_invoice_issued(self, event: InvoiceIssued, uow: NotificationsUnitOfWork) -> None:
        message = domain.invoice_issued(
            event.amount_minor, event.currency, event.period_start, event.period_end
        )
        self._notify_user(uow, event.user_id, Kind.INVOICE_ISSUED, message, event.event_id)

    def on_invoice_paid(self, event: InvoicePaid, uow: NotificationsUnitOfWork) -> None:
        message = domain.receipt(event.amount_minor, event.currency)
        self._notify_user(uow, event.user_id, Kind.RECEIPT, message, event.event_id)

    def on_subscription_cancelled(
        self, event: SubscriptionCancelled, uow: NotificationsUnitOfWork
    ) -> None:
        message = domain.subscription_cancelled(event.reason)
        self._notify_user(uow, event.user_id, Kind.SUBSCRIPTION_CANCELLED, message, event.event_id)

    def _notify_user(
        self,
        uow: NotificationsUnitOfWork,
        user_id: str,
        kind: Kind,
        message: tuple[str, str],
        event_id: str,
    ) -> None:
        user = self._users.find_user(user_id)
        if user is None:
            # Raising makes the relay retry, then park the event for an operator.
            raise LookupError(f"user {user_id} is unknown to users; cannot address {kind}")
        services.notify(
            uow,
            self._sender,
            user_id=user_id,
            recipient=user.email,
            kind=kind,
            message=message,
            event_id=event_id,
        )
