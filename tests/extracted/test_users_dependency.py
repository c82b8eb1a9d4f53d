"""The service's one dependency on the monolith: its users API.

When users cannot be asked, subscribing answers 503 with a clear message
and writes nothing; everything that does not need users goes on working.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from extracted.billing_service import create_app as create_billing_service
from extracted.billing_service.app import system_of
from extracted.billing_service.billing import orm
from tests.support.api import create_plan, ok
from tests.support.databases import empty_tables
from tests.support.processes import free_port


def subscription_rows(app) -> int:
    with system_of(app).engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(orm.subscriptions)
        ).scalar_one()


@pytest.fixture
def service_without_users(billing_service_config):
    """The service with the real users client, pointed where nothing listens."""
    app = create_billing_service(
        {
            **billing_service_config,
            "USERS_URL": f"http://127.0.0.1:{free_port()}",
            "USERS_RETRIES": 1,
            "USERS_BREAKER_FAILURES": 2,
        }
    )
    yield app
    empty_tables(system_of(app).engine, [orm.metadata])
    system_of(app).engine.dispose()


def test_users_unreachable_is_503_with_a_clear_message_and_nothing_written(service_without_users):
    client = service_without_users.test_client()
    plan = create_plan(client)
    body = {"user_id": "7e0a3c47-3a5e-4a4b-9b8f-0c1d2e3f4a5b", "plan_id": plan["id"]}

    first = client.post("/billing/subscriptions", json=body)
    answers = [client.post("/billing/subscriptions", json=body) for _ in range(2)]

    assert first.status_code == 503
    error = first.get_json()
    assert error["code"] == "dependency_unavailable"
    assert "users could not be reached" in error["message"]
    assert "nothing was written" in error["message"]
    # After two failures in a row the breaker answers at once, without trying.
    assert "circuit open" in answers[-1].get_json()["message"]
    assert {a.status_code for a in answers} == {503}
    assert subscription_rows(service_without_users) == 0


def test_what_does_not_need_users_keeps_working_while_users_is_down(service_without_users):
    client = service_without_users.test_client()

    plan = create_plan(client)

    assert ok(client.get(f"/billing/plans/{plan['id']}")) == plan


def test_a_stand_in_users_outage_is_the_same_503(service_client, users):
    plan = create_plan(service_client)
    users.down = True

    response = service_client.post(
        "/billing/subscriptions", json={"user_id": users.add(), "plan_id": plan["id"]}
    )

    assert response.status_code == 503
    assert response.get_json()["code"] == "dependency_unavailable"
