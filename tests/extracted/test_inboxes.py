"""The internal inboxes of both deployables: signed or refused, applied once,
unknown events tolerated, failures answered so that the sender retries."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from extracted.billing_service.app import system_of as service_system
from extracted.billing_service.billing import orm as service_orm
from monolith import create_app as create_monolith
from monolith.app import system_of as monolith_system
from monolith.billing.events import InvoiceIssued
from monolith.bootstrap import MODULE_METADATA
from servicekit.events import Envelope
from servicekit.ids import new_id
from servicekit.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Keyring
from tests.extracted.conftest import post_signed
from tests.extracted.deployment import TEST_KEYS
from tests.support.api import SettledClient, kinds, ok, register_user
from tests.support.databases import empty_tables, migrate

INBOX = "/internal/events"


def user_deactivated(user_id: str) -> dict:
    return {
        "event_id": new_id(),
        "event_type": "UserDeactivated",
        "source": "users",
        "aggregate_id": user_id,
        "occurred_at": "2026-11-27T10:00:00+00:00",
        "payload": {"user_id": user_id},
    }


def active_subscription(client, users) -> dict:
    plan = ok(
        client.post(
            "/billing/plans",
            json={
                "code": new_id()[:8],
                "name": "P",
                "price_minor": 100,
                "currency": "EUR",
                "interval": "month",
            },
        ),
        201,
    )
    body = {"user_id": users.add(), "plan_id": plan["id"]}
    return ok(client.post("/billing/subscriptions", json=body), 201)


def status_of(client, subscription) -> str:
    return ok(client.get(f"/billing/subscriptions/{subscription['id']}"))["status"]


def outbox_types(app) -> list[str]:
    outbox = service_orm.outbox
    with service_system(app).engine.connect() as connection:
        return list(connection.execute(sa.select(outbox.c.event_type)).scalars())


# -- the billing service's inbox -------------------------------------------------


STALE = Keyring(Keyring.parse(TEST_KEYS).keys, clock=lambda: 1_000_000_000.0)
WRONG_KEY = Keyring.parse("test:not-the-secret")
RIGHT_KEY = Keyring.parse(TEST_KEYS)


def send(client, event: dict, keyring: Keyring | None, *, tamper: bool = False):
    raw = json.dumps(event).encode()
    headers = keyring.sign("POST", INBOX, raw) if keyring else {}
    if tamper:
        raw = raw.replace(b'"users"', b'"usurp"')
    return client.post(INBOX, data=raw, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize(
    ("keyring", "tamper"),
    [(None, False), (WRONG_KEY, False), (STALE, False), (RIGHT_KEY, True)],
    ids=["unsigned", "wrong-key", "stale", "tampered-body"],
)
def test_an_unsigned_or_badly_signed_event_is_401_and_changes_nothing(
    billing_service, service_client, users, keyring, tamper
):
    subscription = active_subscription(service_client, users)

    response = send(
        service_client, user_deactivated(subscription["user_id"]), keyring, tamper=tamper
    )

    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"
    assert status_of(service_client, subscription) == "active"
    assert outbox_types(billing_service) == []


def test_a_signed_user_deactivation_cancels_once_however_often_it_arrives(
    billing_service, service_client, users
):
    subscription = active_subscription(service_client, users)
    event = user_deactivated(subscription["user_id"])

    answers = [post_signed(service_client, INBOX, event) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].get_json() == {"event_id": event["event_id"], "outcome": "applied"}
    assert status_of(service_client, subscription) == "cancelled"
    assert outbox_types(billing_service) == ["SubscriptionCancelled"]


def test_an_event_the_service_does_not_consume_is_accepted_and_ignored(
    billing_service, service_client
):
    event = {**user_deactivated(new_id()), "event_type": "UserRenamedTheirCat"}

    response = post_signed(service_client, INBOX, event)

    assert response.status_code == 200
    assert response.get_json()["outcome"] == "ignored"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"occurred_at": None}, "occurred_at"),
        ({"payload": "not an object"}, "payload"),
        ({"occurred_at": "2026-11-27T10:00:00"}, "UTC offset"),
    ],
)
def test_a_malformed_envelope_is_422(service_client, change, problem):
    event = {**user_deactivated(new_id()), **change}
    if change.get("occurred_at", "") is None:
        del event["occurred_at"]

    response = post_signed(service_client, INBOX, event)

    assert response.status_code == 422
    assert problem in response.get_json()["message"]


def test_the_signature_headers_are_named_in_the_refusal(service_client):
    message = service_client.post(INBOX, json={}).get_json()["message"]

    assert all(h in message for h in (KEY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))


# -- the monolith's inbox -----------------------------------------------------------


@pytest.fixture
def monolith_app(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('monolith-inbox') / 'monolith.db'}"
    migrate("monolith", url)
    app = create_monolith({"DATABASE_URL": url, "TESTING": True, "INTERNAL_KEYS": TEST_KEYS})
    app.test_client_class = SettledClient
    yield app
    empty_tables(monolith_system(app).engine, list(MODULE_METADATA.values()))
    monolith_system(app).engine.dispose()


def invoice_issued(user_id: str) -> dict:
    event = InvoiceIssued(
        invoice_id=new_id(),
        subscription_id=new_id(),
        user_id=user_id,
        amount_minor=2_500,
        currency="EUR",
        period_start="2026-11-01",
        period_end="2026-12-01",
    )
    return Envelope.wrap(event, source="billing").to_json()


def test_the_monolith_applies_a_signed_billing_event_once_and_refuses_unsigned_ones(monolith_app):
    client = monolith_app.test_client()
    user = register_user(client)
    event = invoice_issued(user["id"])

    unsigned = client.post(INBOX, json=event)
    assert unsigned.status_code == 401
    assert kinds(client, user["id"]) == ["welcome"]

    answers = [post_signed(client, INBOX, event).status_code for _ in range(2)]

    assert answers == [200, 200]
    assert kinds(client, user["id"]) == ["welcome", "invoice_issued"]


def test_the_monolith_answers_503_when_a_handler_fails_so_that_the_relay_retries(monolith_app):
    client = monolith_app.test_client()

    # Notifications cannot address a user that users does not know: the handler fails.
    response = post_signed(client, INBOX, invoice_issued(new_id()))

    assert response.status_code == 503
    assert "not applied" in response.get_json()["message"]
