"""Users' rules and errors. Pure Python: no Flask, no SQLAlchemy."""

from __future__ import annotations

import dataclasses
import datetime as dt

from servicekit.errors import Conflict, NotFound


class UserNotFound(NotFound):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} does not exist", user_id=user_id)


class EmailTaken(Conflict):
    code = "email_taken"

    def __init__(self, email: str) -> None:
        super().__init__(f"a user with email {email} already exists", email=email)


class UserInactive(Conflict):
    code = "user_inactive"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} is deactivated", user_id=user_id)


def normalise_email(email: str) -> str:
    """Emails are unique regardless of case or surrounding blanks."""
    return email.strip().lower()


@dataclasses.dataclass
class User:
    id: str
    email: str
    name: str
    active: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    deactivated_at: dt.datetime | None = None

    def rename(self, name: str, now: dt.datetime) -> None:
        self._require_active()
        self.name = name
        self.updated_at = now

    def change_email(self, email: str, now: dt.datetime) -> None:
        self._require_active()
        self.email = normalise_email(email)
        self.updated_at = now

    def deactivate(self, now: dt.datetime) -> None:
        self._require_active()
        self.active = False
        self.deactivated_at = now
        self.updated_at = now

    def _require_active(self) -> None:
        if not self.active:
            raise UserInactive(self.id)
