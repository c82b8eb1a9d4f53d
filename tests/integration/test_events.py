"""Integration events: outbox in the same transaction, delivery after commit,
retries without loss, parking and replay, and handlers applied once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from monolith.app import system_of
from monolith.billing import orm as billing_orm
from monolith.users import orm as users_orm
from servicekit.events import Envelope
from tests.support.api import kinds, ok, register_user


class FlakySender:
    """A sender whose outage a test switches on and off."""

    def __init__(self):
        self.down = False
        self.sent = []

    def send(self, recipient, subject, body):
        if self.down:
            raise ConnectionError("mail server down")
        self.sent.append((recipient, subject))


def outbox_rows(app, outbox):
    with system_of(app).engine.connect() as connection:
        return connection.execute(sa.select(outbox).order_by(outbox.c.position)).all()


def test_an_event_is_written_with_the_change_and_delivered_after_commit(monolith, client):
    user = register_user(client)

    [row] = outbox_rows(monolith, users_orm.outbox)

    assert (row.event_type, row.aggregate_id) == ("UserRegistered", user["id"])
    assert row.payload["email"] == user["email"]
    assert row.delivered_at is not None


def test_a_refused_change_publishes_nothing(monolith, client):
    user = register_user(client)
    ok(client.post(f"/users/{user['id']}/deactivate"))

    client.post(f"/users/{user['id']}/deactivate")  # refused: already inactive

    assert [r.event_type for r in outbox_rows(monolith, users_orm.outbox)] == [
        "UserRegistered",
        "UserDeactivated",
    ]


class TestDeliveryByTheRelay:
    """Eager delivery off: these tests drive the relay by hand."""

    @pytest.fixture
    def monolith_config(self, monolith_config):
        # These tests drive delivery by hand through the relay.
        return {**monolith_config, "EVENTS_DELIVER_EAGERLY": False, "EVENTS_MAX_ATTEMPTS": 3}

    def test_events_wait_in_the_outbox_until_the_relay_delivers_them(self, monolith, client):
        user = register_user(client)
        assert kinds(client, user["id"]) == []

        delivered = system_of(monolith).relay_pending()

        assert delivered == 1
        assert kinds(client, user["id"]) == ["welcome"]
        assert system_of(monolith).relay_pending() == 0

    def test_a_failing_subscriber_loses_nothing_and_is_retried(self, monolith, client, monkeypatch):
        system = system_of(monolith)
        user = register_user(client)
        monkeypatch.setattr(
            "monolith.notifications.services.notify", _raise(RuntimeError("disk full"))
        )

        report = system.relays["users"].relay_pending()
        [row] = outbox_rows(monolith, users_orm.outbox)

        assert (report.delivered, report.failed) == (0, 1)
        assert row.delivered_at is None
        assert row.attempts == 1
        assert "disk full" in row.last_error

        monkeypatch.undo()
        _make_due(monolith, users_orm.outbox)
        assert system.relays["users"].relay_pending().delivered == 1
        assert kinds(client, user["id"]) == ["welcome"]

    def test_an_event_is_applied_once_however_often_it_arrives(self, monolith, client):
        system = system_of(monolith)
        user = register_user(client)
        [row] = outbox_rows(monolith, users_orm.outbox)
        envelope = Envelope(
            row.event_id, row.event_type, "users", row.aggregate_id, row.occurred_at, row.payload
        )

        for _ in range(3):
            system.bus.deliver(envelope)

        assert kinds(client, user["id"]) == ["welcome"]

    def test_events_of_one_aggregate_keep_their_order_across_failures(
        self, monolith, client, monkeypatch
    ):
        system = system_of(monolith)
        user = register_user(client)
        ok(client.post(f"/users/{user['id']}/deactivate"))
        monkeypatch.setattr("monolith.notifications.services.notify", _raise(RuntimeError("down")))

        report = system.relays["users"].relay_pending()

        # UserRegistered failed; UserDeactivated of the same user must not overtake it.
        assert (report.failed, report.deferred, report.delivered) == (1, 1, 0)
        assert all(r.delivered_at is None for r in outbox_rows(monolith, users_orm.outbox))

    def test_a_poison_event_is_parked_then_replayed_from_the_cli(
        self, monolith, client, monkeypatch
    ):
        system = system_of(monolith)
        user = register_user(client)
        monkeypatch.setattr(
            "monolith.notifications.services.notify", _raise(RuntimeError("poison"))
        )
        for _ in range(3):
            _make_due(monolith, users_orm.outbox)
            system.relays["users"].relay_pending()
        runner = monolith.test_cli_runner()

        parked = runner.invoke(args=["events", "parked"])
        [row] = outbox_rows(monolith, users_orm.outbox)

        assert row.parked_at is not None and row.attempts == 3
        assert row.event_id in parked.output and "poison" in parked.output
        assert system.relays["users"].relay_pending().delivered == 0  # parked events wait

        monkeypatch.undo()
        replayed = runner.invoke(args=["events", "replay", row.event_id])
        assert replayed.exit_code == 0, replayed.output
        assert system.relays["users"].relay_pending().delivered == 1
        assert kinds(client, user["id"]) == ["welcome"]
        assert runner.invoke(args=["events", "replay", row.event_id]).exit_code != 0

    def test_the_relay_command_delivers_what_is_pending(self, monolith, client):
        user = register_user(client)

        result = monolith.test_cli_runner().invoke(args=["events", "relay", "--once"])

        assert result.exit_code == 0, result.output
        assert kinds(client, user["id"]) == ["welcome"]

    def test_deactivation_cancels_billing_through_the_bus_in_order(self, monolith, client):
        system = system_of(monolith)
        user = register_user(client)
        plan = ok(
            client.post(
                "/billing/plans",
                json={
                    "code": "p-" + user["id"][:8],
                    "name": "P",
                    "price_minor": 100,
                    "currency": "EUR",
                    "interval": "month",
                },
            ),
            201,
        )
        subscription = ok(
            client.post(
                "/billing/subscriptions", json={"user_id": user["id"], "plan_id": plan["id"]}
            ),
            201,
        )
        ok(client.post(f"/users/{user['id']}/deactivate"))

        system.relay_pending()  # users' events: billing cancels, publishing its own
        system.relay_pending()  # billing's SubscriptionCancelled reaches notifications

        cancelled = ok(client.get(f"/billing/subscriptions/{subscription['id']}"))
        assert cancelled["status"] == "cancelled"
        assert [r.event_type for r in outbox_rows(monolith, billing_orm.outbox)] == [
            "SubscriptionCancelled"
        ]
        assert kinds(client, user["id"]) == ["welcome", "subscription_cancelled"]


def _raise(error):
    def failing(*args, **kwargs):
        raise error

    return failing


def _make_due(app, outbox):
    """Skip the backoff wait: tests should not sleep through it."""
    with system_of(app).engine.begin() as connection:
        connection.execute(outbox.update().values(next_attempt_at=None))
