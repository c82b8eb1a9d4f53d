"""Billing's users directory in the service: the monolith's users API over HTTP.

Billing asks one question of users — does this user exist, and is it
active? — before it writes anything. Inside the monolith that was a facade
call; here it is ``GET /users/{id}`` on the monolith, through servicekit's
one HTTP client (timeouts, retried reads, a circuit breaker).

The failure mode, chosen on purpose: when users cannot be asked, subscribing
answers 503 and writes nothing. Billing never guesses that a user is active.
(The alternative — a local replica of users fed by ``UserRegistered`` and
``UserDeactivated`` — keeps working while the monolith is down, at the price
of a second copy of the data and a window in which it is stale; see
docs/03-extract-the-code.md.)
"""

from __future__ import annotations

import dataclasses

from servicekit.httpclient import HttpClient, Unavailable

__all__ = ["User", "UsersApi"]


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    email: str
    name: str
    active: bool


class UsersApi:
    """Satisfies :class:`extracted.billing_service.billing.services.UserDirectory`."""

    def __init__(self, client: HttpClient) -> None:
        self._client = client

    def find_user(self, user_id: str) -> User | None:
        """The user with this id, None if users says there is none; raises Unavailable."""
        response = self._client.get(f"/users/{user_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise Unavailable(
                f"users answered {response.status_code} for user {user_id}; nothing was written",
                dependency=self._client.name,
            )
        data = response.json()
        return User(id=data["id"], email=data["email"], name=data["name"], active=data["active"])
