"""The monolith's commands: ``flask --app monolith <command>``."""

from __future__ import annotations

import json
import time

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from monolith import boundaries
from monolith.billing.seed import seed_billing
from monolith.bootstrap import Monolith
from monolith.users.seed import seed_users
from servicekit.cli import events_group


def register(app: Flask, system: Monolith) -> None:
    app.cli.add_command(seed)
    app.cli.add_command(boundaries_command)
    app.cli.add_command(
        events_group(
            system.relays,
            poll_seconds=float(app.config["RELAY_POLL_SECONDS"]),
            description="Inspect and deliver the modules' outboxes.",
        )
    )


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
