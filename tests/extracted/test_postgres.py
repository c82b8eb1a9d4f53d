"""The billing service on PostgreSQL, its production database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command

from extracted.billing_service import create_app as create_billing_service
from extracted.billing_service.app import system_of
from extracted.billing_service.billing import orm
from tests.extracted.conftest import StandInUsers
from tests.extracted.deployment import TEST_KEYS
from tests.support import postgres
from tests.support.api import create_plan, ok, pay
from tests.support.databases import alembic_config, migrate

pytestmark = pytest.mark.postgres


@pytest.fixture
def service_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database of the service's own, dropped afterwards."""
    postgres.require_postgres()
    url = postgres.create_database("strangler_billing_service")
    yield url
    postgres.drop_database(url)


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_the_service_migrations_go_up_and_down_on_postgres(service_pg_url):
    migrate("billing_service", service_pg_url)
    assert table_names(service_pg_url) == set(orm.metadata.tables) | {"alembic_version"}

    command.downgrade(alembic_config("billing_service", service_pg_url), "base")
    assert table_names(service_pg_url) == {"alembic_version"}

    migrate("billing_service", service_pg_url)
    assert set(orm.metadata.tables) <= table_names(service_pg_url)


def test_subscribe_invoice_and_pay_once_on_postgres(service_pg_url):
    migrate("billing_service", service_pg_url)
    users = StandInUsers()
    app = create_billing_service(
        {"DATABASE_URL": service_pg_url, "TESTING": True, "INTERNAL_KEYS": TEST_KEYS}, users=users
    )
    client = app.test_client()
    try:
        plan = create_plan(client, price_minor=2_500)
        body = {"user_id": users.add(), "plan_id": plan["id"]}
        subscription = ok(client.post("/billing/subscriptions", json=body), 201)
        twice = client.post("/billing/subscriptions", json=body)
        invoice = ok(
            client.post("/billing/invoices", json={"subscription_id": subscription["id"]}), 201
        )
        first = pay(client, invoice["id"], 2_500, key="pay-once")
        replay = pay(client, invoice["id"], 2_500, key="pay-once")

        assert twice.status_code == 409
        assert (first.status_code, replay.status_code) == (201, 201)
        assert replay.get_json() == first.get_json()
        assert ok(client.get(f"/billing/invoices/{invoice['id']}"))["status"] == "paid"
        assert system_of(app).relay.pending_count() == 2  # InvoiceIssued, InvoicePaid
    finally:
        system_of(app).engine.dispose()
