"""All SQL of the notifications module, and its unit of work."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from monolith.notifications import orm
from monolith.notifications.domain import DeliveryStatus, Kind, Notification
from servicekit.uow import UnitOfWork


class NotificationRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, notification: Notification) -> None:
        self._session.execute(orm.messages.insert().values(**dataclasses.asdict(notification)))

    def for_user(self, user_id: str, *, offset: int, limit: int) -> tuple[list[Notification], int]:
        m = orm.messages
        query = (
            sa.select(m)
            .where(m.c.user_id == user_id)
            .order_by(m.c.created_at, m.c.id)
            .offset(offset)
            .limit(limit)
        )
        rows = self._session.execute(query).all()
        total = self._session.execute(
            sa.select(sa.func.count()).select_from(m).where(m.c.user_id == user_id)
        ).scalar_one()
        return [_notification(row) for row in rows], total


def _notification(row: sa.Row[Any]) -> Notification:
    return Notification(
        **{**row._mapping, "kind": Kind(row.kind), "status": DeliveryStatus(row.status)}
    )


class NotificationsUnitOfWork(UnitOfWork):
    notifications: NotificationRepository

    def __enter__(self) -> NotificationsUnitOfWork:
        super().__enter__()
        self.notifications = NotificationRepository(self.session)
        return self
