from __future__ import annotations

import datetime as dt

import pytest

from monolith.users.domain import User, UserInactive, normalise_email

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_emails_are_compared_without_case_or_blanks():
    assert normalise_email("  Ada@Example.COM ") == "ada@example.com"


def test_a_deactivated_user_can_be_neither_deactivated_again_nor_changed():
    user = User(
        id="u", email="a@example.com", name="A", active=True, created_at=NOW, updated_at=NOW
    )
    user.deactivate(NOW)

    with pytest.raises(UserInactive):
        user.deactivate(NOW)
    with pytest.raises(UserInactive):
        user.rename("B", NOW)
    assert user.name == "A"
