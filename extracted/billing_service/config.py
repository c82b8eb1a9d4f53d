"""The billing service's settings: named defaults, then ``BILLING_SERVICE_*``
environment variables, then the mapping given to ``create_app`` (tests use that)."""

from __future__ import annotations

import os
from typing import Any

from servicekit.httpclient import (
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_BREAKER_RESET,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_RETRIES,
    DEFAULT_READ_TIMEOUT,
)
from servicekit.idempotency import DEFAULT_LOCK_TIMEOUT
from servicekit.ports import local_url
from servicekit.web import DEFAULT_MAX_BODY_BYTES, openapi_settings

ENV_PREFIX = "BILLING_SERVICE"
DEFAULT_DATABASE_FILE = os.path.join("var", "billing_service.db")
DEFAULT_RELAY_POLL_SECONDS = 0.2
#: Delivery crosses the network now: keep trying for about an hour of
#: backoff (capped at DEFAULT_EVENTS_BACKOFF_MAX_SECONDS) before parking.
DEFAULT_EVENTS_MAX_ATTEMPTS = 20
DEFAULT_EVENTS_BACKOFF_MAX_SECONDS = 300.0


def defaults() -> dict[str, Any]:
    return {
        # Relative to the working directory, which `make run` sets to the project root.
        "DATABASE_URL": "sqlite:///" + os.path.abspath(DEFAULT_DATABASE_FILE),
        "MAX_CONTENT_LENGTH": DEFAULT_MAX_BODY_BYTES,
        "USERS_URL": local_url("monolith"),
        "USERS_CONNECT_TIMEOUT": DEFAULT_CONNECT_TIMEOUT,
        "USERS_READ_TIMEOUT": DEFAULT_READ_TIMEOUT,
        "USERS_RETRIES": DEFAULT_READ_RETRIES,
        "USERS_BREAKER_FAILURES": DEFAULT_BREAKER_FAILURES,
        "USERS_BREAKER_RESET": DEFAULT_BREAKER_RESET,
        # Where billing's events are delivered: the monolith's /internal/events.
        "EVENTS_URL": local_url("monolith"),
        "EVENTS_BREAKER_RESET": DEFAULT_BREAKER_RESET,
        "EVENTS_MAX_ATTEMPTS": DEFAULT_EVENTS_MAX_ATTEMPTS,
        "EVENTS_BACKOFF_MAX_SECONDS": DEFAULT_EVENTS_BACKOFF_MAX_SECONDS,
        "RELAY_POLL_SECONDS": DEFAULT_RELAY_POLL_SECONDS,
        # A payment's key reserved by a process that died is taken over after
        # this long: longer than any request may run (gunicorn's timeout is 30 s).
        "IDEMPOTENCY_LOCK_SECONDS": DEFAULT_LOCK_TIMEOUT.total_seconds(),
        # Off: a request never waits on another deployable. The relay process
        # delivers within RELAY_POLL_SECONDS.
        "EVENTS_DELIVER_EAGERLY": False,
        # "k2:secret,k1:old-secret": signs with the first, accepts all. Empty
        # means the development key, with a warning (servicekit.signing).
        "INTERNAL_KEYS": "",
        **openapi_settings("Billing service", "1.0.0"),
    }
