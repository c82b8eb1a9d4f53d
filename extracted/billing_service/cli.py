"""The billing service's commands: ``flask --app extracted.billing_service.wsgi <command>``."""

from __future__ import annotations

from flask import Flask

from extracted.billing_service.bootstrap import SOURCE, BillingService
from servicekit.cli import events_group


def register(app: Flask, system: BillingService) -> None:
    app.cli.add_command(
        events_group(
            {SOURCE: system.relay},
            poll_seconds=float(app.config["RELAY_POLL_SECONDS"]),
            description="Deliver and inspect the billing outbox.",
        )
    )
