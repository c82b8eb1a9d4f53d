"""Notifications' use cases."""

from __future__ import annotations

import logging
from typing import Protocol

from monolith.notifications.domain import DeliveryStatus, Kind, Notification
from monolith.notifications.repository import NotificationsUnitOfWork
from servicekit.db import utcnow
from servicekit.ids import new_id

logger = logging.getLogger(__name__)


class Sender(Protocol):
    """Sends a message to a recipient; raises when it could not."""

    def send(self, recipient: str, subject: str, body: str) -> None: ...


class LogSender:
    """Writes the message to the log: this reference sends no real email."""

    def send(self, recipient: str, subject: str, body: str) -> None:
        logger.info("notify %s: %s — %s", recipient, subject, body)


def notify(
    uow: NotificationsUnitOfWork,
    sender: Sender,
    *,
    user_id: str,
    recipient: str,
    kind: Kind,
    message: tuple[str, str],
    event_id: str,
) -> Notification:
    """Send a message and record it with its delivery status, in the caller's transaction."""
    subject, body = message
    try:
        sender.send(recipient, subject, body)
        status = DeliveryStatus.SENT
    except Exception:
        logger.exception("sending %s to %s failed", kind, recipient)
        status = DeliveryStatus.FAILED
    notification = Notification(
        id=new_id(),
        user_id=user_id,
        kind=kind,
        recipient=recipient,
        subject=subject,
        body=body,
        status=status,
        event_id=event_id,
        created_at=utcnow(),
    )
    uow.notifications.add(notification)
    return notification


def list_for_user(
    uow: NotificationsUnitOfWork, user_id: str, *, offset: int, limit: int
) -> tuple[list[Notification], int]:
    with uow:
        return uow.notifications.for_user(user_id, offset=offset, limit=limit)
