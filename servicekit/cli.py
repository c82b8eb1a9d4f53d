"""The ``events`` command group every deployable with an outbox registers.

``flask --app <deployable> events relay|pending|parked|replay`` delivers and
inspects the deployable's outboxes; the commands and what they print are the
same everywhere, only the outboxes differ. Each app factory builds its own
group from the relays its composition root made::

    app.cli.add_command(
        events_group(system.relays, poll_seconds=..., description="Deliver and ...")
    )
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from types import FrameType

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from servicekit.outbox import OutboxRelay

__all__ = ["events_group"]

logger = logging.getLogger(__name__)

#: The longest wait between two attempts while the database cannot be read.
MAX_RETRY_PAUSE = 5.0


def events_group(
    relays: Mapping[str, OutboxRelay],
    *,
    poll_seconds: float,
    description: str,
) -> AppGroup:
    """The ``events`` group over ``relays`` (outbox name to its relay).

    ``poll_seconds`` is how long ``events relay`` waits between rounds;
    ``description`` is the group's ``--help`` text.
    """
    events = AppGroup("events", help=description)

    @events.command("relay")
    @click.option("--once", is_flag=True, help="Deliver what is due, then exit.")
    def relay(once: bool) -> None:
        """Deliver pending events until stopped (the Procfile runs this)."""
        stopping = False

        def stop(_signum: int, _frame: FrameType | None) -> None:
            # Finish the round in progress, then leave: nothing half-recorded.
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        pause = poll_seconds
        while True:
            try:
                delivered = sum(r.relay_pending().delivered for r in relays.values())
                pause = poll_seconds
            except sa.exc.DBAPIError as error:
                if once:
                    raise
                # A locked SQLite file (a seed running beside `make run`) or a
                # database restarting: the events wait in the outbox; try again.
                pause = min(MAX_RETRY_PAUSE, max(pause * 2, poll_seconds))
                logger.warning(
                    "could not read the outbox (%s); retrying in %.1fs",
                    str(error.orig).strip() or type(error.orig).__name__,
                    pause,
                )
                delivered = 0
            if delivered:
                logger.info("relayed %s event(s)", delivered)
            if once or stopping:
                return
            time.sleep(pause)

    @events.command("pending")
    def pending() -> None:
        """How many events wait for delivery, per outbox."""
        for name, outbox_relay in relays.items():
            click.echo(f"{name}: {outbox_relay.pending_count()} pending")

    @events.command("parked")
    def parked() -> None:
        """Events that failed too often and wait for an operator."""
        found = False
        for name, outbox_relay in relays.items():
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
        for outbox_relay in relays.values():
            if outbox_relay.replay(event_id):
                click.echo(f"{event_id} will be delivered again")
                return
        raise click.ClickException(f"no parked event {event_id}")

    return events
