"""The mover's settings: named defaults, then ``MOVER_*`` environment
variables, then the mapping given to ``create_app`` (tests use that)."""

from __future__ import annotations

import os
from typing import Any

ENV_PREFIX = "MOVER"
#: The two databases of the billing move: the monolith's and the service's.
DEFAULT_SOURCE_FILE = os.path.join("var", "monolith.db")
DEFAULT_TARGET_FILE = os.path.join("var", "billing_service.db")
#: Rows per backfill chunk: one short transaction on the target each. Measured
#: at 100,000 invoices on SQLite: 5,000 reached 0.41x a plain bulk copy, 20,000 0.85x.
DEFAULT_CHUNK_ROWS = 20_000
#: Captured changes applied per turn of the loop.
DEFAULT_APPLY_BATCH = 500
#: How often an idle loop looks for new changes.
DEFAULT_POLL_SECONDS = 0.05
#: Sleep this many times a chunk's duration after it: the backfill's throttle.
DEFAULT_NICE = 0.1
#: A mover that stops renewing its lease for this long is presumed dead.
DEFAULT_LEASE_SECONDS = 10.0
#: A running move is verified again this often (and on demand).
DEFAULT_VERIFY_EVERY_SECONDS = 300.0
DEFAULT_VERIFY_RANGE_ROWS = 10_000
#: How often a running move checks that both schemas still match.
DEFAULT_SCHEMA_CHECK_SECONDS = 5.0
#: Where the decommission's Alembic environment is (`strangler data complete`
#: applies the archive revision of the source's database with it).
DEFAULT_ALEMBIC_CONFIG = "alembic.ini"
DEFAULT_DECOMMISSION_ENVIRONMENT = "monolith_decommission"
#: How long the archive migration may take before complete gives up on it.
DEFAULT_ARCHIVE_TIMEOUT = 120.0


def _sqlite(path: str) -> str:
    # Relative to the working directory, which `make run` sets to the project root.
    return "sqlite:///" + os.path.abspath(path)


def defaults() -> dict[str, Any]:
    return {
        "SOURCE_URL": _sqlite(DEFAULT_SOURCE_FILE),
        "TARGET_URL": _sqlite(DEFAULT_TARGET_FILE),
        "CHUNK_ROWS": DEFAULT_CHUNK_ROWS,
        "APPLY_BATCH": DEFAULT_APPLY_BATCH,
        "POLL_SECONDS": DEFAULT_POLL_SECONDS,
        "NICE": DEFAULT_NICE,
        "LEASE_SECONDS": DEFAULT_LEASE_SECONDS,
        "VERIFY_EVERY_SECONDS": DEFAULT_VERIFY_EVERY_SECONDS,
        "VERIFY_RANGE_ROWS": DEFAULT_VERIFY_RANGE_ROWS,
        "SCHEMA_CHECK_SECONDS": DEFAULT_SCHEMA_CHECK_SECONDS,
        # Empty: complete records the decision and stops; the archive is run by hand.
        "ALEMBIC_CONFIG": os.path.abspath(DEFAULT_ALEMBIC_CONFIG),
        "DECOMMISSION_ENVIRONMENT": DEFAULT_DECOMMISSION_ENVIRONMENT,
        "ARCHIVE_TIMEOUT": DEFAULT_ARCHIVE_TIMEOUT,
        # "k2:secret,k1:old-secret": commands must be signed by one of these
        # (the proxy signs them). Empty means the development key, with a warning.
        "INTERNAL_KEYS": "",
    }
