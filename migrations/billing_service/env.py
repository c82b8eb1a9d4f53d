"""Alembic environment of the billing service's database.

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by a
caller (tests), ``BILLING_SERVICE_DATABASE_URL``, or the service's default.
One database, one module: one branch, no ``-x module`` narrowing; the rest is
:func:`servicekit.migrations.run_migrations`.
"""

from __future__ import annotations

from extracted.billing_service.billing.orm import metadata
from extracted.billing_service.config import defaults
from servicekit.migrations import run_migrations

run_migrations(
    metadata,
    url_variable="BILLING_SERVICE_DATABASE_URL",
    default_url=defaults()["DATABASE_URL"],
)
