"""Events across the network survive crashes: nothing lost, nothing applied twice.

The monolith, the billing service and both relays run as real processes.
While the service publishes a stream of InvoiceIssued and InvoicePaid
events, the service's relay is SIGKILLed and restarted, then the monolith
is SIGKILLed (mid-delivery) and restarted. Afterwards every event in the
service's outbox has become exactly one notification in the monolith.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from extracted.billing_service.billing import orm
from tests.extracted.deployment import Deployment, answered, created, deployed
from tests.support.ids import unique, unique_email
from tests.support.processes import poll

pytestmark = pytest.mark.e2e

USERS = 3
ROUNDS = 8  # each round: one invoice and its payment per user, two events each


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    with deployed(
        tmp_path_factory.mktemp("no-event-lost"), billing_adapter="http", with_service=True
    ) as running:
        yield running


def published_event_ids(deployment: Deployment) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{deployment.service_db_path}")
    with engine.connect() as connection:
        ids = list(connection.execute(sa.select(orm.outbox.c.event_id)).scalars())
    engine.dispose()
    return ids


def outbox_rows(deployment: Deployment) -> list[sa.Row]:
    engine = sa.create_engine(f"sqlite:///{deployment.service_db_path}")
    with engine.connect() as connection:
        rows = connection.execute(sa.select(orm.outbox)).all()
    engine.dispose()
    return rows


def notified_event_ids(monolith: httpx.Client, user_ids: list[str]) -> list[str]:
    found = []
    for user_id in user_ids:
        response = monolith.get("/notifications", params={"user_id": user_id, "page_size": 100})
        found += [n["event_id"] for n in answered(response) if n["kind"] != "welcome"]
    return found


def test_killing_the_relay_and_the_monolith_loses_no_event_and_doubles_none(deployment):
    monolith = httpx.Client(base_url=deployment.monolith_url, timeout=10)
    service = httpx.Client(base_url=deployment.service_url, timeout=10)
    plan = created(
        service.post(
            "/billing/plans",
            json={
                "code": unique("plan"),
                "name": "Pro",
                "price_minor": 1_000,
                "currency": "EUR",
                "interval": "month",
            },
        )
    )
    users = [
        created(monolith.post("/users", json={"email": unique_email(), "name": "Ada"}))
        for _ in range(USERS)
    ]
    subscriptions = [
        created(
            service.post("/billing/subscriptions", json={"user_id": u["id"], "plan_id": plan["id"]})
        )
        for u in users
    ]

    for round_number in range(ROUNDS):
        if round_number == 2:
            deployment.processes["service-relay"].kill()  # SIGKILL, mid-stream
        if round_number == 4:
            # With the relay dead, the outbox keeps what was published.
            assert [r for r in outbox_rows(deployment) if r.delivered_at is None]
            deployment.start_service_relay()
        if round_number == 5:
            deployment.processes["monolith"].kill()  # while the relay is delivering to it
        if round_number == 7:
            # The relay kept trying while the monolith was down, and kept the events.
            poll(
                lambda: [r for r in outbox_rows(deployment) if r.attempts and not r.delivered_at],
                message="no delivery failed while the monolith was down",
            )
            deployment.start_monolith()
        for subscription in subscriptions:
            invoice = created(
                service.post("/billing/invoices", json={"subscription_id": subscription["id"]})
            )
            created(
                service.post(
                    f"/billing/invoices/{invoice['id']}/payments",
                    json={"amount_minor": 1_000, "currency": "EUR"},
                    headers={"Idempotency-Key": unique("key")},
                )
            )

    published = published_event_ids(deployment)
    user_ids = [u["id"] for u in users]
    assert len(published) == USERS * ROUNDS * 2
    poll(
        lambda: set(notified_event_ids(monolith, user_ids)) == set(published),
        timeout=30,
        message="some events never reached the monolith:\n" + deployment.logs_text(),
    )
    counts = collections.Counter(notified_event_ids(monolith, user_ids))
    assert set(counts.values()) == {1}, [e for e, n in counts.items() if n > 1]
    monolith.close()
    service.close()


def test_an_unsigned_request_to_a_running_inbox_is_refused(deployment):
    event = {
        "event_id": "00000000-0000-0000-0000-000000000001",
        "event_type": "InvoiceIssued",
        "source": "billing",
        "aggregate_id": "x",
        "occurred_at": "2026-11-27T10:00:00+00:00",
        "payload": {},
    }
    for url in (deployment.monolith_url, deployment.service_url):
        response = httpx.post(url + "/internal/events", json=event, timeout=5)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
