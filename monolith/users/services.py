"""Users' use cases. Each takes a unit of work and commits it."""

from __future__ import annotations

import logging

from monolith.users.domain import EmailTaken, User, UserNotFound, normalise_email
from monolith.users.events import UserDeactivated, UserRegistered
from monolith.users.repository import UsersUnitOfWork
from servicekit.db import utcnow
from servicekit.ids import new_id

logger = logging.getLogger(__name__)


def register(uow: UsersUnitOfWork, *, email: str, name: str) -> User:
    with uow:
        email = normalise_email(email)
        if uow.users.email_in_use(email):
            raise EmailTaken(email)
        now = utcnow()
        user = User(
            id=new_id(), email=email, name=name, active=True, created_at=now, updated_at=now
        )
        uow.users.add(user)
        uow.publish(UserRegistered(user_id=user.id, email=user.email, name=user.name))
        uow.commit()
        logger.info("registered user %s", user.id)
        return user


def get(uow: UsersUnitOfWork, user_id: str) -> User:
    with uow:
        user = uow.users.get(user_id)
        if user is None:
            raise UserNotFound(user_id)
        return user


def list_users(
    uow: UsersUnitOfWork, *, offset: int, limit: int, active: bool | None = None
) -> tuple[list[User], int]:
    with uow:
        return uow.users.list(offset=offset, limit=limit, active=active), uow.users.count(
            active=active
        )


def update(
    uow: UsersUnitOfWork, user_id: str, *, name: str | None = None, email: str | None = None
) -> User:
    with uow:
        user = uow.users.get(user_id, for_update=True)
        if user is None:
            raise UserNotFound(user_id)
        now = utcnow()
        if email is not None and normalise_email(email) != user.email:
            if uow.users.email_in_use(normalise_email(email), besides=user.id):
                raise EmailTaken(normalise_email(email))
            user.change_email(email, now)
        if name is not None and name != user.name:
            user.rename(name, now)
        uow.users.save(user)
        uow.commit()
        return user


def deactivate(uow: UsersUnitOfWork, user_id: str) -> User:
    with uow:
        user = uow.users.get(user_id, for_update=True)
        if user is None:
            raise UserNotFound(user_id)
        user.deactivate(utcnow())
        uow.users.save(user)
        uow.publish(UserDeactivated(user_id=user.id))
        uow.commit()
        logger.info("deactivated user %s", user.id)
        return user
