"""The monolith's API in a few verbs, so tests read like the tutorial."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from monolith.app import system_of
from tests.support.ids import unique, unique_email


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def register_user(client: FlaskClient, name: str = "Ada Lovelace") -> dict[str, Any]:
    return ok(client.post("/users", json={"email": unique_email(), "name": name}), 201)


def create_plan(
    client: FlaskClient, price_minor: int = 2_500, currency: str = "EUR"
) -> dict[str, Any]:
    body = {
        "code": unique("plan"),
        "name": "Pro",
        "price_minor": price_minor,
        "currency": currency,
        "interval": "month",
    }
    return ok(client.post("/billing/plans", json=body), 201)


def subscribe(client: FlaskClient, user: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    body = {"user_id": user["id"], "plan_id": plan["id"]}
    return ok(client.post("/billing/subscriptions", json=body), 201)


def invoice(
    client: FlaskClient, subscription: dict[str, Any], *, draft: bool = False
) -> dict[str, Any]:
    body = {"subscription_id": subscription["id"], "draft": draft}
    return ok(client.post("/billing/invoices", json=body), 201)


def open_invoice(client: FlaskClient, price_minor: int = 2_500) -> dict[str, Any]:
    """A fresh user, plan, subscription and an open invoice; returns the invoice."""
    user = register_user(client)
    return invoice(client, subscribe(client, user, create_plan(client, price_minor)))


def pay(
    client: FlaskClient,
    invoice_id: str,
    amount_minor: int,
    *,
    key: str | None = None,
    currency: str = "EUR",
) -> Any:
    return client.post(
        f"/billing/invoices/{invoice_id}/payments",
        json={"amount_minor": amount_minor, "currency": currency},
        headers={"Idempotency-Key": key or unique("key")},
    )


def notifications(client: FlaskClient, user_id: str) -> list[dict[str, Any]]:
    return ok(client.get(f"/notifications?user_id={user_id}"))


def kinds(client: FlaskClient, user_id: str) -> list[str]:
    return [n["kind"] for n in notifications(client, user_id)]


#: How long a test client waits for the events a request committed to be delivered.
DELIVERY_WAIT_SECONDS = 10.0


class SettledClient(FlaskClient):
    """A monolith test client whose requests return once the events they
    committed were delivered (the app delivers them on a thread of its own,
    after answering), so that a test reads their effects as a user would a
    moment later — and fails if they never come."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        assert system_of(self.application).wait_for_deliveries(DELIVERY_WAIT_SECONDS), (
            "the events this request committed were not delivered"
        )
        return response
