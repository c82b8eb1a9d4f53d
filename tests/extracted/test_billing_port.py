"""Branch by abstraction: the monolith works whichever side serves billing.

``side`` is parametrised over the billing port's two adapters, each as
`make run` would serve it:

- ``inprocess``: the monolith alone; billing is its module;
- ``http``: the monolith (``MONOLITH_BILLING_ADAPTER=http``), the billing
  service and both relays; billing routes are used on the service, users
  and notifications stay on the monolith.

The same tests pass on both: that is the point.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from monolith import create_app as create_monolith
from monolith.app import system_of
from monolith.bootstrap import MODULE_METADATA
from monolith.users import orm as users_orm
from tests.extracted.deployment import (
    TEST_KEYS,
    answered,
    created,
    deployed,
    wait_for_kinds,
)
from tests.support.databases import empty_tables, migrate
from tests.support.ids import unique, unique_email
from tests.support.processes import free_port, poll

ADAPTERS = ["inprocess", "http"]


@dataclasses.dataclass
class Side:
    adapter: str
    monolith: httpx.Client
    billing: httpx.Client


@pytest.fixture(scope="module", params=ADAPTERS)
def side(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Side]:
    adapter = request.param
    with deployed(
        tmp_path_factory.mktemp(f"port-{adapter}"),
        billing_adapter=adapter,
        with_service=adapter == "http",
    ) as running:
        billing_url = running.service_url if adapter == "http" else running.monolith_url
        with (
            httpx.Client(base_url=running.monolith_url, timeout=10) as monolith,
            httpx.Client(base_url=billing_url, timeout=10) as billing,
        ):
            yield Side(adapter, monolith, billing)


def register(side: Side) -> dict:
    return created(side.monolith.post("/users", json={"email": unique_email(), "name": "Ada"}))


def subscribe(side: Side, user: dict, price: int = 2_500) -> dict:
    plan = created(
        side.billing.post(
            "/billing/plans",
            json={
                "code": unique("plan"),
                "name": "Pro",
                "price_minor": price,
                "currency": "EUR",
                "interval": "month",
            },
        )
    )
    body = {"user_id": user["id"], "plan_id": plan["id"]}
    return created(side.billing.post("/billing/subscriptions", json=body))


@pytest.mark.e2e
def test_a_user_of_the_monolith_subscribes_is_invoiced_pays_and_is_notified(side):
    user = register(side)
    subscription = subscribe(side, user)

    invoice = created(
        side.billing.post("/billing/invoices", json={"subscription_id": subscription["id"]})
    )
    created(
        side.billing.post(
            f"/billing/invoices/{invoice['id']}/payments",
            json={"amount_minor": 2_500, "currency": "EUR"},
            headers={"Idempotency-Key": unique("key")},
        )
    )

    assert answered(side.billing.get(f"/billing/invoices/{invoice['id']}"))["status"] == "paid"
    wait_for_kinds(side.monolith, user["id"], ["welcome", "invoice_issued", "receipt"])


@pytest.mark.e2e
def test_deactivating_a_user_on_the_monolith_cancels_their_billing(side):
    user = register(side)
    subscriptions = [subscribe(side, user) for _ in range(2)]

    answered(side.monolith.post(f"/users/{user['id']}/deactivate"))

    def cancelled() -> bool:
        found = answered(side.billing.get("/billing/subscriptions", params={"user_id": user["id"]}))
        return len(found) == 2 and {s["status"] for s in found} == {"cancelled"}

    poll(cancelled, timeout=15, message=f"billing ({side.adapter}) never cancelled")
    wait_for_kinds(
        side.monolith, user["id"], ["welcome", "subscription_cancelled", "subscription_cancelled"]
    )
    assert len(subscriptions) == 2


# -- the port's wiring, in process ------------------------------------------------------


@pytest.fixture
def monolith_with(tmp_path):
    """Build the monolith in process with the given billing adapter."""
    url = f"sqlite:///{tmp_path / 'monolith.db'}"
    migrate("monolith", url)
    apps = []

    def build(adapter: str, **config):
        app = create_monolith(
            {
                "DATABASE_URL": url,
                "TESTING": True,
                "INTERNAL_KEYS": TEST_KEYS,
                "BILLING_ADAPTER": adapter,
                "EVENTS_DELIVER_EAGERLY": False,
                **config,
            }
        )
        apps.append(app)
        return app

    yield build
    for app in apps:
        empty_tables(system_of(app).engine, list(MODULE_METADATA.values()))
        system_of(app).engine.dispose()


@pytest.mark.parametrize(
    ("adapter", "billing_consumes"), [("inprocess", ["UserDeactivated"]), ("http", [])]
)
def test_the_boundary_report_shows_where_billing_consumes(monolith_with, adapter, billing_consumes):
    app = monolith_with(adapter)

    result = app.test_cli_runner().invoke(args=["boundaries", "--json"])

    report = {module["name"]: module for module in json.loads(result.output)}
    assert report["billing"]["consumes"] == billing_consumes
    subscribers = system_of(app).bus.subscriptions()["UserDeactivated"]
    assert len(subscribers) == 1  # billing hears it once: here, or at the service


def test_while_the_service_is_down_the_users_event_waits_in_the_outbox(monolith_with):
    app = monolith_with("http", BILLING_SERVICE_URL=f"http://127.0.0.1:{free_port()}")
    client = app.test_client()
    user = answered_flask(client.post("/users", json={"email": unique_email(), "name": "Ada"}), 201)

    deactivated = client.post(f"/users/{user['id']}/deactivate")
    report = system_of(app).relays["users"].relay_pending()

    assert deactivated.status_code == 200  # users does not wait for billing
    assert (report.delivered, report.failed) == (1, 1)  # welcome sent; billing's share waits
    [waiting] = [e for e in outbox_of(app) if e.delivered_at is None]
    assert waiting.event_type == "UserDeactivated"
    assert "the billing service could not be reached" in waiting.last_error


def test_an_unknown_adapter_is_a_configuration_error(monolith_with):
    with pytest.raises(ValueError, match="MONOLITH_BILLING_ADAPTER"):
        monolith_with("carrier-pigeon")


def answered_flask(response, status: int = 200):
    assert response.status_code == status, response.get_json()
    return response.get_json()


def outbox_of(app):
    with system_of(app).engine.connect() as connection:
        return connection.execute(sa.select(users_orm.outbox)).all()
