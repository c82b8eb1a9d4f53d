"""Alembic environment of the monolith's database: every module's tables,
one branch of history per module (``-x module=billing`` narrows autogenerate).

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by a
caller (tests), ``MONOLITH_DATABASE_URL``, or the monolith's default; the rest
is :func:`servicekit.migrations.run_migrations`.
"""

from __future__ import annotations

from monolith.bootstrap import MODULE_METADATA
from monolith.config import defaults
from servicekit.migrations import run_migrations

run_migrations(
    MODULE_METADATA,
    url_variable="MONOLITH_DATABASE_URL",
    default_url=defaults()["DATABASE_URL"],
)
