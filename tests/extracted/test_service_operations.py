"""Operating the service: its relay's parking and replay from the CLI, its
migrations matching its models, readiness."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from extracted.billing_service.app import system_of
from extracted.billing_service.billing import orm
from servicekit.db import create_engine
from tests.support.api import create_plan, ok
from tests.support.databases import migrate


def cancelled_subscription(client, users) -> dict:
    plan = create_plan(client)
    body = {"user_id": users.add(), "plan_id": plan["id"]}
    subscription = ok(client.post("/billing/subscriptions", json=body), 201)
    return ok(client.post(f"/billing/subscriptions/{subscription['id']}/cancel"))


def make_due(app) -> None:
    with system_of(app).engine.begin() as connection:
        connection.execute(orm.outbox.update().values(next_attempt_at=None))


class TestParking:
    @pytest.fixture
    def billing_service_config(self, billing_service_config):
        # The monolith's inbox is nowhere (conftest): every delivery fails.
        return {**billing_service_config, "EVENTS_MAX_ATTEMPTS": 2}

    def test_an_event_the_monolith_never_takes_is_parked_listed_and_replayed(
        self, billing_service, service_client, users
    ):
        system = system_of(billing_service)
        runner = billing_service.test_cli_runner()
        cancelled_subscription(service_client, users)

        for _ in range(2):
            make_due(billing_service)
            assert runner.invoke(args=["events", "relay", "--once"]).exit_code == 0

        [parked] = system.relay.parked()
        listing = runner.invoke(args=["events", "parked"]).output
        assert parked.envelope.event_type == "SubscriptionCancelled"
        assert parked.envelope.event_id in listing and "could not be reached" in listing
        assert "0 pending" in runner.invoke(args=["events", "pending"]).output

        replayed = runner.invoke(args=["events", "replay", parked.envelope.event_id])

        assert replayed.exit_code == 0, replayed.output
        assert "1 pending" in runner.invoke(args=["events", "pending"]).output
        assert runner.invoke(args=["events", "replay", parked.envelope.event_id]).exit_code != 0


def test_the_migrations_build_exactly_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'billing_service.db'}"
    migrate("billing_service", url)
    engine = create_engine(url)

    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), orm.metadata)
        tables = set(sa.inspect(connection).get_table_names())
    engine.dispose()

    assert differences == []
    assert tables == set(orm.metadata.tables) | {"alembic_version"}


def test_the_service_is_ready_when_its_database_answers(service_client):
    assert ok(service_client.get("/ready")) == {"status": "ready"}
    assert ok(service_client.get("/health")) == {"status": "ok"}
