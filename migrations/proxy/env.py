"""Alembic environment of the strangler proxy's route-table database.

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by a
caller (tests), ``PROXY_DATABASE_URL``, or the proxy's default; the rest is
:func:`servicekit.migrations.run_migrations`.
"""

from __future__ import annotations

from servicekit.migrations import run_migrations
from strangler_proxy.config import defaults
from strangler_proxy.orm import metadata

run_migrations(
    metadata,
    url_variable="PROXY_DATABASE_URL",
    default_url=defaults()["DATABASE_URL"],
)
