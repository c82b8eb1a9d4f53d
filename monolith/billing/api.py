"""The billing module's public facade: what the rest of the monolith may use of it.

The rest of the monolith reaches billing through events only: billing reacts
to users' ``UserDeactivated`` by cancelling the user's subscriptions, and
publishes its own events for notifications. So the facade offers one thing —
hooking billing's reactions to the monolith's event bus — and
:mod:`monolith.billing_port` decides whether it is used (billing runs here)
or the events go to the billing service instead.
"""

from __future__ import annotations

from collections.abc import Callable

from monolith.billing import handlers, orm
from monolith.billing.repository import BillingUnitOfWork
from monolith.users.events import UserDeactivated
from servicekit.inbox import EventBus

__all__ = ["BillingFacade"]


class BillingFacade:
    def __init__(self, uow_factory: Callable[[], BillingUnitOfWork]) -> None:
        self._uow_factory = uow_factory

    def listen(self, bus: EventBus) -> None:
        """Subscribe billing's reactions to other modules' events on ``bus``.

        Each runs in billing's own transaction, recorded in billing's inbox:
        an event is applied once however often it is delivered.
        """
        bus.subscribe(
            UserDeactivated,
            handlers.on_user_deactivated,
            uow_factory=self._uow_factory,
            inbox=orm.processed_events,
        )
