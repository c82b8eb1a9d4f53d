"""Alembic environment of the strangler proxy's route-table database.

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by a
caller (tests), ``PROXY_DATABASE_URL``, or the proxy's default.
"""

from __future__ import annotations

import os

from alembic import context

from servicekit.db import create_engine
from strangler_proxy.config import defaults
from strangler_proxy.orm import metadata

config = context.config
target_metadata = metadata


def database_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("PROXY_DATABASE_URL")
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
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
