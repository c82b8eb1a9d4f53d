"""The monolith's application factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from monolith import cli
from monolith.billing import http as billing_http
from monolith.billing_port import ADAPTERS, HTTP
from monolith.bootstrap import Monolith, bootstrap
from monolith.config import ENV_PREFIX, defaults
from monolith.notifications import http as notifications_http
from monolith.users import http as users_http
from servicekit.httpclient import HttpClient
from servicekit.internal import inbox_blueprint
from servicekit.signing import Keyring
from servicekit.web import ServiceApi, init_service

EXTENSION = "monolith"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask("monolith")
    app.config.from_mapping(defaults())
    app.config.from_prefixed_env(ENV_PREFIX)
    app.config.update(config or {})

    keyring = Keyring.parse(app.config["INTERNAL_KEYS"], owner="the monolith")
    system = bootstrap(
        app.config["DATABASE_URL"],
        max_attempts=int(app.config["EVENTS_MAX_ATTEMPTS"]),
        deliver_eagerly=bool(app.config["EVENTS_DELIVER_EAGERLY"]),
        billing_service=_billing_service(app.config, keyring),
        billing_service_later=_billing_service_later(app.config, keyring),
    )
    app.extensions[EXTENSION] = system

    api = ServiceApi(app)
    api.register_blueprint(users_http.create_blueprint(system.users_uow))
    api.register_blueprint(
        billing_http.create_blueprint(
            system.billing_uow,
            system.billing_read_uow,
            system.users,
            system.billing_idempotency,
            system.billing_ownership,
        )
    )
    api.register_blueprint(notifications_http.create_blueprint(system.notifications_uow))
    # Other deployables' events (the billing service's); signed, not in the OpenAPI document.
    app.register_blueprint(inbox_blueprint(system.bus, keyring))
    init_service(app, api, ready_check=system.check_database)
    cli.register(app, system)
    return app


def system_of(app: Flask) -> Monolith:
    return app.extensions[EXTENSION]


def _billing_service(config: Mapping[str, Any], keyring: Keyring) -> HttpClient | None:
    """A client of the billing service if billing runs there (the billing port's HTTP adapter)."""
    adapter = config["BILLING_ADAPTER"]
    if adapter not in ADAPTERS:
        raise ValueError(f"MONOLITH_BILLING_ADAPTER must be one of {ADAPTERS}, not {adapter!r}")
    if adapter != HTTP:
        return None
    return HttpClient(config["BILLING_SERVICE_URL"], name="the billing service", keyring=keyring)


def _billing_service_later(config: Mapping[str, Any], keyring: Keyring) -> HttpClient | None:
    """With billing in this process: the billing service its events go to once
    billing is decommissioned here (`strangler data complete billing`)."""
    if config["BILLING_ADAPTER"] == HTTP or not config["BILLING_SERVICE_URL"]:
        return None
    return HttpClient(config["BILLING_SERVICE_URL"], name="the billing service", keyring=keyring)
