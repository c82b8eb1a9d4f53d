"""Integration events the users module publishes."""

from __future__ import annotations

import dataclasses

from servicekit.events import IntegrationEvent


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserRegistered(IntegrationEvent):
    aggregate_field = "user_id"
    user_id: str
    email: str
    name: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserDeactivated(IntegrationEvent):
    aggregate_field = "user_id"
    user_id: str


PUBLISHED = (UserRegistered, UserDeactivated)
