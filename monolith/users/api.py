"""The users module's public facade: what other modules may ask of it.

Plain functions over plain data. Other modules import this file and
``events.py``, nothing else of users (an import-linter contract enforces it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from monolith.users.repository import UsersUnitOfWork

__all__ = ["UserSummary", "UsersFacade"]


@dataclasses.dataclass(frozen=True)
class UserSummary:
    id: str
    email: str
    name: str
    active: bool


class UsersFacade:
    def __init__(self, uow_factory: Callable[[], UsersUnitOfWork]) -> None:
        self._uow_factory = uow_factory

    def find_user(self, user_id: str) -> UserSummary | None:
        """The user with this id, or None if there is none."""
        with self._uow_factory() as uow:
            user = uow.users.get(user_id)
        if user is None:
            return None
        return UserSummary(id=user.id, email=user.email, name=user.name, active=user.active)
