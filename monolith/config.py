"""The monolith's settings: named defaults, then ``MONOLITH_*`` environment
variables, then the mapping given to ``create_app`` (tests use that)."""

from __future__ import annotations

import os
from typing import Any

from servicekit.outbox import DEFAULT_MAX_ATTEMPTS
from servicekit.ports import local_url
from servicekit.web import DEFAULT_MAX_BODY_BYTES, openapi_settings

ENV_PREFIX = "MONOLITH"
DEFAULT_DATABASE_FILE = os.path.join("var", "monolith.db")
DEFAULT_RELAY_POLL_SECONDS = 0.5
#: Where billing runs (monolith/billing_port.py): "inprocess" or "http".
DEFAULT_BILLING_ADAPTER = "inprocess"


def defaults() -> dict[str, Any]:
    return {
        # Relative to the working directory, which `make run` sets to the project root.
        "DATABASE_URL": "sqlite:///" + os.path.abspath(DEFAULT_DATABASE_FILE),
        "MAX_CONTENT_LENGTH": DEFAULT_MAX_BODY_BYTES,
        "EVENTS_MAX_ATTEMPTS": DEFAULT_MAX_ATTEMPTS,
        "RELAY_POLL_SECONDS": DEFAULT_RELAY_POLL_SECONDS,
        # Events are delivered right after the commit that wrote them; the relay
        # process retries what failed. Tests may turn the eager path off.
        "EVENTS_DELIVER_EAGERLY": True,
        "BILLING_ADAPTER": DEFAULT_BILLING_ADAPTER,
        "BILLING_SERVICE_URL": local_url("billing"),
        # "k2:secret,k1:old-secret" signs internal calls with the first key and
        # accepts all; empty means the development key, with a warning.
        "INTERNAL_KEYS": "",
        **openapi_settings("Monolith: users, billing, notifications", "1.0.0"),
    }
