"""servicekit's outbox pieces that every deployable wires the same way: eager
delivery after commit, and the ``events`` command group over a set of relays.

Built on a bare outbox table, with no deployable: what is pinned here holds
for the monolith, the billing service and whatever registers them next.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy.orm import sessionmaker

from servicekit.cli import events_group
from servicekit.db import create_engine
from servicekit.events import Envelope, IntegrationEvent
from servicekit.outbox import OutboxRelay, PromptDelivery, RelayReport, outbox_table
from servicekit.uow import UnitOfWork

SOURCE = "kit"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThingHappened(IntegrationEvent):
    aggregate_field = "thing_id"
    thing_id: str


class Consumer:
    """Where the relay delivers; a test switches an outage on and off."""

    def __init__(self) -> None:
        self.down = False
        self.received: list[Envelope] = []
        self.held_until: threading.Event | None = None  # set: each delivery waits for it

    def __call__(self, envelope: Envelope) -> None:
        if self.held_until is not None:
            self.held_until.wait(5)
        if self.down:
            raise ConnectionError("consumer unreachable")
        self.received.append(envelope)


@dataclasses.dataclass
class Outbox:
    """One outbox on a fresh database, its relay, and the relay's consumer."""

    table: sa.Table
    sessions: sessionmaker
    relay: OutboxRelay
    consumer: Consumer
    prompt: PromptDelivery

    def publish(self, thing_id: str, *, eagerly: bool = False) -> ThingHappened:
        event = ThingHappened(thing_id=thing_id)
        after_commit = self.prompt if eagerly else None
        with UnitOfWork(
            self.sessions, outbox=self.table, source=SOURCE, after_commit=after_commit
        ) as uow:
            uow.publish(event)
            uow.commit()
        return event


@pytest.fixture
def outbox(tmp_path) -> Iterator[Outbox]:
    metadata = sa.MetaData()
    table = outbox_table(metadata, SOURCE)
    engine = create_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    consumer = Consumer()
    relay = OutboxRelay(sessions, table, source=SOURCE, deliver=consumer, max_attempts=2)
    yield Outbox(table, sessions, relay, consumer, PromptDelivery(relay))
    engine.dispose()


@pytest.fixture
def events_cli(outbox: Outbox) -> FlaskCliRunner:
    """A runner of ``events ...`` on an app that registered the group over ``outbox``."""
    app = Flask("kit")
    app.cli.add_command(
        events_group({SOURCE: outbox.relay}, poll_seconds=0.0, description="The kit's outbox.")
    )
    return app.test_cli_runner()


def park_one(outbox: Outbox) -> ThingHappened:
    """Publish an event the consumer refuses until the relay gives up on it."""
    event = outbox.publish("t-parked")
    outbox.consumer.down = True
    for _ in range(2):
        with outbox.sessions.begin() as session:
            session.execute(outbox.table.update().values(next_attempt_at=None))
        outbox.relay.relay_pending()
    outbox.consumer.down = False
    return event


# --- eager delivery ---------------------------------------------------------


def test_prompt_delivery_hands_the_committed_events_over_right_after_the_commit(outbox):
    event = outbox.publish("t1", eagerly=True)

    assert outbox.prompt.wait_until_idle(timeout=5)
    assert [e.event_id for e in outbox.consumer.received] == [event.event_id]
    assert outbox.relay.pending_count() == 0


def test_the_committer_does_not_wait_for_the_delivery(outbox):
    outbox.consumer.held_until = threading.Event()

    outbox.publish("t1", eagerly=True)  # returns while the consumer is held

    assert outbox.consumer.received == []
    assert not outbox.prompt.wait_until_idle(timeout=0.05)
    outbox.consumer.held_until.set()
    assert outbox.prompt.wait_until_idle(timeout=5)
    assert len(outbox.consumer.received) == 1


def test_events_queued_meanwhile_go_in_one_batch_in_commit_order(outbox):
    entered, gate = threading.Event(), threading.Event()
    original = outbox.relay.relay_events
    batches: list[list[str]] = []

    def held(event_ids, **kwargs):
        batches.append(list(event_ids))
        entered.set()
        gate.wait(5)
        return original(batches[-1], **kwargs)

    outbox.relay.relay_events = held  # type: ignore[method-assign]
    events = [outbox.publish("t0", eagerly=True)]
    assert entered.wait(5)  # the thread took the first event and is busy with it
    events += [outbox.publish(f"t{n}", eagerly=True) for n in range(1, 5)]
    gate.set()

    assert outbox.prompt.wait_until_idle(timeout=5)
    assert batches[0] == [events[0].event_id]  # taken before the others were committed
    assert batches[1:] == [[e.event_id for e in events[1:]]]
    assert [e.event_id for e in outbox.consumer.received] == [e.event_id for e in events]
    assert outbox.relay.pending_count() == 0


def test_an_older_event_still_waiting_holds_back_its_aggregate_only(outbox):
    outbox.consumer.down = True
    outbox.publish("t1")
    outbox.relay.relay_pending()  # t1 fails: back-off
    outbox.consumer.down = False

    later = outbox.publish("t1")
    other = outbox.publish("t2")
    report = outbox.relay.relay_events([later.event_id, other.event_id])

    assert (report.delivered, report.deferred) == (1, 1)
    assert [e.event_id for e in outbox.consumer.received] == [other.event_id]


def test_a_full_queue_leaves_further_events_to_the_relay(outbox):
    prompt = PromptDelivery(outbox.relay, max_queued=1)
    outbox.consumer.held_until = threading.Event()
    outbox.prompt = prompt

    events = [outbox.publish(f"t{n}", eagerly=True) for n in range(3)]

    assert prompt.left_to_the_relay == 2
    outbox.consumer.held_until.set()
    assert prompt.wait_until_idle(timeout=5)
    assert [e.event_id for e in outbox.consumer.received] == [events[0].event_id]
    assert outbox.relay.relay_pending().delivered == 2


def test_without_eager_delivery_events_wait_for_the_relay(outbox):
    event = outbox.publish("t1")

    assert outbox.consumer.received == []
    assert outbox.relay.pending_count() == 1
    outbox.relay.relay_pending()
    assert [e.event_id for e in outbox.consumer.received] == [event.event_id]


def test_a_failed_prompt_delivery_leaves_the_event_to_the_relay(outbox):
    outbox.consumer.down = True

    outbox.publish("t1", eagerly=True)

    assert outbox.prompt.wait_until_idle(timeout=5)
    assert outbox.relay.pending_count() == 1
    outbox.consumer.down = False
    with outbox.sessions.begin() as session:
        session.execute(outbox.table.update().values(next_attempt_at=None))
    assert outbox.relay.relay_pending().delivered == 1


# --- the events command group ----------------------------------------------


def test_pending_counts_per_outbox(outbox, events_cli):
    outbox.publish("t1")
    outbox.publish("t2")

    result = events_cli.invoke(args=["events", "pending"])

    assert result.exit_code == 0, result.output
    assert result.output == "kit: 2 pending\n"


def test_relay_once_delivers_what_is_due_and_exits(outbox, events_cli):
    event = outbox.publish("t1")

    result = events_cli.invoke(args=["events", "relay", "--once"])

    assert result.exit_code == 0, result.output
    assert [e.event_id for e in outbox.consumer.received] == [event.event_id]


def test_parked_lists_each_parked_event_with_its_error(outbox, events_cli):
    assert events_cli.invoke(args=["events", "parked"]).output == "no parked events\n"
    event = park_one(outbox)

    listing = events_cli.invoke(args=["events", "parked"]).output

    assert listing == (
        f"kit {event.event_id} ThingHappened aggregate=t-parked attempts=2"
        " error=ConnectionError: consumer unreachable\n"
    )


def test_replay_puts_a_parked_event_back_in_line_once(outbox, events_cli):
    event = park_one(outbox)

    replayed = events_cli.invoke(args=["events", "replay", event.event_id])
    again = events_cli.invoke(args=["events", "replay", event.event_id])

    assert replayed.exit_code == 0, replayed.output
    assert replayed.output == f"{event.event_id} will be delivered again\n"
    assert outbox.relay.pending_count() == 1
    assert again.exit_code == 1
    assert f"no parked event {event.event_id}" in again.output


def test_the_group_says_what_it_is_for(events_cli):
    result = events_cli.invoke(args=["events", "--help"])

    assert "The kit's outbox." in result.output
    assert {"relay", "pending", "parked", "replay"} <= set(result.output.split())


class LockedOnce:
    """A relay whose database is locked on the first round (a seed writing beside it)."""

    def __init__(self) -> None:
        self.rounds = 0

    def relay_pending(self) -> RelayReport:
        self.rounds += 1
        if self.rounds == 1:
            raise sa.exc.OperationalError(
                "SELECT", {}, sqlite3.OperationalError("database is locked")
            )
        os.kill(os.getpid(), signal.SIGTERM)  # the relay's own handler: finish the round, leave
        return RelayReport(delivered=1)


def test_the_relay_outlives_a_locked_database_and_says_so(caplog):
    relay = LockedOnce()
    app = Flask("kit")
    app.cli.add_command(events_group({SOURCE: relay}, poll_seconds=0.0, description="locked"))

    with caplog.at_level(logging.WARNING):
        result = app.test_cli_runner().invoke(args=["events", "relay"])

    assert result.exit_code == 0, result.output
    assert relay.rounds == 2
    assert "could not read the outbox (database is locked); retrying" in caplog.text


def test_relay_once_still_fails_loudly_on_a_locked_database():
    app = Flask("kit")
    app.cli.add_command(
        events_group({SOURCE: LockedOnce()}, poll_seconds=0.0, description="locked")
    )
    result = app.test_cli_runner().invoke(args=["events", "relay", "--once"])
    assert isinstance(result.exception, sa.exc.OperationalError)
