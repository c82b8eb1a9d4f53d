"""Alembic environment of the monolith's database.

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by a
caller (tests), ``MONOLITH_DATABASE_URL``, or the monolith's default.
"""

from __future__ import annotations

import os

from alembic import context

from monolith.bootstrap import MODULE_METADATA
from monolith.config import defaults
from servicekit.db import create_engine

config = context.config
#: ``-x module=billing`` narrows autogenerate to one module's tables, so that
#: each module's revisions live on its own branch:
#:   alembic -n monolith revision --autogenerate -x module=billing \
#:       --head billing@head -m "billing: what changed"
MODULE = context.get_x_argument(as_dictionary=True).get("module")
target_metadata = [MODULE_METADATA[MODULE]] if MODULE else list(MODULE_METADATA.values())


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    """With ``-x module``, leave other modules' tables alone."""
    if MODULE and type_ == "table":
        return name in MODULE_METADATA[MODULE].tables
    return True


def database_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("MONOLITH_DATABASE_URL")
        or defaults()["DATABASE_URL"]
    )


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url())
    with engine.connect() as connection:
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
