"""Billing's reactions to the integration events it consumes (they arrive at
the service's inbox, ``POST /internal/events``).

The consuming module owns its handlers. The event bus gives each handler an
open unit of work and commits it together with the inbox record, so a
handler neither opens nor commits a transaction itself.
"""

from __future__ import annotations

import logging

from extracted.billing_service.billing import services
from extracted.billing_service.billing.consumed import UserDeactivated
from extracted.billing_service.billing.repository import BillingUnitOfWork

logger = logging.getLogger(__name__)


def on_user_deactivated(event: UserDeactivated, uow: BillingUnitOfWork) -> None:
    """A deactivated user is billed no more: cancel their subscriptions."""
    cancelled = services.cancel_all_for_user(uow, event.user_id, reason="user_deactivated")
    logger.info("cancelled %s subscription(s) of deactivated user %s", cancelled, event.user_id)
