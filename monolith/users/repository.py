"""All SQL of the users module, and its unit of work."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from monolith.users import orm
from monolith.users.domain import User
from servicekit.uow import UnitOfWork


class UserRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, user: User) -> None:
        self._session.execute(orm.accounts.insert().values(**_columns(user)))

    def save(self, user: User) -> None:
        self._session.execute(
            orm.accounts.update().where(orm.accounts.c.id == user.id).values(**_columns(user))
        )

    def get(self, user_id: str, *, for_update: bool = False) -> User | None:
        query = sa.select(orm.accounts).where(orm.accounts.c.id == user_id)
        if for_update:
            query = query.with_for_update()
        row = self._session.execute(query).first()
        return _user(row) if row else None

    def email_in_use(self, email: str, *, besides: str | None = None) -> bool:
        query = sa.select(orm.accounts.c.id).where(orm.accounts.c.email == email)
        if besides:
            query = query.where(orm.accounts.c.id != besides)
        return self._session.execute(query).first() is not None

    def list(self, *, offset: int, limit: int, active: bool | None = None) -> list[User]:
        query = sa.select(orm.accounts).order_by(orm.accounts.c.created_at, orm.accounts.c.id)
        if active is not None:
            query = query.where(orm.accounts.c.active == active)
        rows = self._session.execute(query.offset(offset).limit(limit)).all()
        return [_user(row) for row in rows]

    def count(self, *, active: bool | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(orm.accounts)
        if active is not None:
            query = query.where(orm.accounts.c.active == active)
        return self._session.execute(query).scalar_one()


def _columns(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "active": user.active,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "deactivated_at": user.deactivated_at,
    }


def _user(row: sa.Row[Any]) -> User:
    return User(**row._mapping)


class UsersUnitOfWork(UnitOfWork):
    users: UserRepository

    def __enter__(self) -> UsersUnitOfWork:
        super().__enter__()
        self.users = UserRepository(self.session)
        return self
