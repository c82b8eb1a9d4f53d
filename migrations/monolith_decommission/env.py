"""Alembic environment of the monolith's decommissions: revisions that run
on the monolith's database only after an operator decided a module has left
for good (``strangler data complete billing`` records the decision and
applies them; docs/10-decommission.md).

Why not a branch of the monolith's own environment: Alembic makes every head
of an environment part of ``upgrade heads`` (``make migrate``), of ``alembic
check``, and of autogenerate's "is the database up to date" test. A revision
that must wait for a decision would be applied by the next ``make migrate``
(or, guarded, would make it fail) and would block every module's
autogenerate until then. Here it has a history of its own, in its own
version table, in the same database.

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by
a caller (tests), ``MONOLITH_DATABASE_URL``, or the monolith's default.
"""

from __future__ import annotations

import sqlalchemy as sa

from monolith.config import defaults
from servicekit.migrations import run_migrations

#: This environment's history, beside the monolith's ``alembic_version``.
VERSION_TABLE = "alembic_version_decommission"

# Nothing to autogenerate: these revisions take tables away, by hand.
run_migrations(
    sa.MetaData(),
    url_variable="MONOLITH_DATABASE_URL",
    default_url=defaults()["DATABASE_URL"],
    version_table=VERSION_TABLE,
)
