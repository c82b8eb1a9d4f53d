"""The monolith's commands: ``flask --app monolith <command>``."""

from __future__ import annotations

import json
import logging
import signal
import time
from types import FrameType

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from monolith import boundaries
from monolith.billing.seed import seed_billing
from monolith.users.seed import seed_users

logger = logging.getLogger(__name__)


def register(app: Flask) -> None:
    app.cli.add_command(seed)
    app.cli.add_command(boundaries_command)
    app.cli.add_command(events)


def _system():  # type: ignore[no-untyped-def]
    from monolith.app import system_of

    return system_of(current_app)


@click.command("seed")
@with_appcontext
@click.option("--users", "user_count", default=200, show_default=True, help="Users to create.")
@click.option("--invoices", default=2_000, show_default=True, help="Invoices to create.")
def seed(user_count: int, invoices: int) -> None:
    """Fill the database with realistic demo data (e.g. --invoices 100000 for benchmarks)."""
    system = _system()
    started = time.perf_counter()
    with system.sessions() as session, session.begin():
        user_ids = seed_users(session, user_count)
        seed_billing(session, user_ids, invoices)
    click.echo(
        f"seeded {user_count} users, {invoices} invoices in {time.perf_counter() - started:.1f}s"
    )


@click.command("boundaries")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print the map as JSON.")
def boundaries_command(as_json: bool) -> None:
    """Print the module map: tables, facades, events — what extraction must carry."""
    from monolith.bootstrap import MODULE_METADATA

    reports = boundaries.module_map(MODULE_METADATA, _system().bus)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in reports], indent=2))
    else:
        click.echo(boundaries.render(reports))
    if not all(report.extractable for report in reports):
        raise SystemExit(1)


events = AppGroup("events", help="Inspect and deliver the modules' outboxes.")


@events.command("relay")
@click.option("--once", is_flag=True, help="Deliver what is due, then exit.")
def relay(once: bool) -> None:
    """Deliver pending events until stopped (the Procfile runs this)."""
    system = _system()
    poll = float(current_app.config["RELAY_POLL_SECONDS"])
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        delivered = system.relay_pending()
        if delivered:
            logger.info("relayed %s event(s)", delivered)
        if once or stopping:
            return
        time.sleep(poll)


@events.command("pending")
def pending() -> None:
    """How many events wait for delivery, per outbox."""
    for name, outbox_relay in _system().relays.items():
        click.echo(f"{name}: {outbox_relay.pending_count()} pending")


@events.command("parked")
def parked() -> None:
    """Events that failed too often and wait for an operator."""
    found = False
    for name, outbox_relay in _system().relays.items():
        for stored in outbox_relay.parked():
            found = True
            envelope = stored.envelope
            click.echo(
                f"{name} {envelope.event_id} {envelope.event_type}"
                f" aggregate={envelope.aggregate_id}"
                f" attempts={stored.attempts} error={stored.last_error}"
            )
    if not found:
        click.echo("no parked events")


@events.command("replay")
@click.argument("event_id")
def replay(event_id: str) -> None:
    """Put a parked event back in line for delivery."""
    for outbox_relay in _system().relays.values():
        if outbox_relay.replay(event_id):
            click.echo(f"{event_id} will be delivered again")
            return
    raise click.ClickException(f"no parked event {event_id}")
