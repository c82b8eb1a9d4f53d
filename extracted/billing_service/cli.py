"""The billing service's commands: ``flask --app extracted.billing_service.wsgi <command>``."""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import click
from flask import Flask, current_app
from flask.cli import AppGroup

logger = logging.getLogger(__name__)


def register(app: Flask) -> None:
    app.cli.add_command(events)


def _system():  # type: ignore[no-untyped-def]
    from extracted.billing_service.app import system_of

    return system_of(current_app)


events = AppGroup("events", help="Deliver and inspect the billing outbox.")


@events.command("relay")
@click.option("--once", is_flag=True, help="Deliver what is due, then exit.")
def relay(once: bool) -> None:
    """Deliver pending events to the monolith's inbox until stopped (the Procfile runs this)."""
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
    """How many events wait for delivery."""
    click.echo(f"billing: {_system().relay.pending_count()} pending")


@events.command("parked")
def parked() -> None:
    """Events that failed too often and wait for an operator."""
    found = _system().relay.parked()
    for stored in found:
        envelope = stored.envelope
        click.echo(
            f"billing {envelope.event_id} {envelope.event_type}"
            f" aggregate={envelope.aggregate_id}"
            f" attempts={stored.attempts} error={stored.last_error}"
        )
    if not found:
        click.echo("no parked events")


@events.command("replay")
@click.argument("event_id")
def replay(event_id: str) -> None:
    """Put a parked event back in line for delivery."""
    if not _system().relay.replay(event_id):
        raise click.ClickException(f"no parked event {event_id}")
    click.echo(f"{event_id} will be delivered again")
