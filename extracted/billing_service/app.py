"""The billing service's application factory."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from flask import Flask

from extracted.billing_service import cli
from extracted.billing_service.billing import http as billing_http
from extracted.billing_service.billing.services import UserDirectory
from extracted.billing_service.bootstrap import BillingService, bootstrap
from extracted.billing_service.config import ENV_PREFIX, defaults
from extracted.billing_service.users import UsersApi
from servicekit.httpclient import HttpClient
from servicekit.internal import EventPoster, inbox_blueprint
from servicekit.signing import Keyring
from servicekit.web import ServiceApi, init_service

EXTENSION = "billing_service"


def create_app(
    config: Mapping[str, Any] | None = None, *, users: UserDirectory | None = None
) -> Flask:
    """The service; ``users`` replaces the monolith's users API (tests only)."""
    app = Flask("billing_service")
    app.config.from_mapping(defaults())
    app.config.from_prefixed_env(ENV_PREFIX)
    app.config.update(config or {})
    settings = app.config

    keyring = Keyring.parse(settings["INTERNAL_KEYS"], owner="the billing service")
    if users is None:
        users = UsersApi(
            HttpClient(
                settings["USERS_URL"],
                name="users",
                connect_timeout=float(settings["USERS_CONNECT_TIMEOUT"]),
                read_timeout=float(settings["USERS_READ_TIMEOUT"]),
                read_retries=int(settings["USERS_RETRIES"]),
                breaker_failures=int(settings["USERS_BREAKER_FAILURES"]),
                breaker_reset=float(settings["USERS_BREAKER_RESET"]),
            )
        )
    to_monolith = EventPoster(
        HttpClient(
            settings["EVENTS_URL"],
            name="the monolith's inbox",
            keyring=keyring,
            breaker_reset=float(settings["EVENTS_BREAKER_RESET"]),
        )
    )
    system = bootstrap(
        settings["DATABASE_URL"],
        deliver=to_monolith,
        max_attempts=int(settings["EVENTS_MAX_ATTEMPTS"]),
        backoff_max=dt.timedelta(seconds=float(settings["EVENTS_BACKOFF_MAX_SECONDS"])),
        deliver_eagerly=bool(settings["EVENTS_DELIVER_EAGERLY"]),
        idempotency_lock=dt.timedelta(seconds=float(settings["IDEMPOTENCY_LOCK_SECONDS"])),
    )
    app.extensions[EXTENSION] = system

    api = ServiceApi(app)
    api.register_blueprint(
        billing_http.create_blueprint(
            system.billing_uow,
            system.billing_read_uow,
            users,
            system.idempotency,
            system.ownership,
        )
    )
    # Internal and signed: not part of the public API or its OpenAPI document.
    app.register_blueprint(inbox_blueprint(system.bus, keyring))
    init_service(app, api, ready_check=system.check_database)
    cli.register(app, system)
    return app


def system_of(app: Flask) -> BillingService:
    return app.extensions[EXTENSION]
