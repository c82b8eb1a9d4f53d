"""What every Alembic environment of this project does, written once.

Each database has its own environment (``migrations/<name>/env.py``, selected
with ``alembic -n <name>``); each env.py only names its tables and where its
URL comes from, then calls :func:`run_migrations`::

    run_migrations(
        metadata,
        url_variable="BILLING_SERVICE_DATABASE_URL",
        default_url=defaults()["DATABASE_URL"],
    )

The URL comes, in order, from ``-x url=...``, the ``sqlalchemy.url`` set by a
caller (tests set it on the Config), the environment variable, or the
deployable's default.

A database shared by several modules passes a mapping of module name to
``MetaData``: ``-x module=<name>`` then narrows autogenerate to that module's
tables, so that each module's revisions live on its own branch::

    alembic -n monolith revision --autogenerate -x module=billing \\
        --head billing@head -m "billing: what changed"

This module must only be called from inside an env.py: Alembic's ``context``
is set up by the ``alembic`` command (or ``alembic.command``) that runs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.util import CommandError

from servicekit.db import create_engine

__all__ = ["database_url", "run_migrations"]

#: ``-x url=...``: the URL for this one run, over any other setting.
URL_ARGUMENT = "url"
#: ``-x module=...``: narrow autogenerate to one module's tables.
MODULE_ARGUMENT = "module"


def database_url(*, url_variable: str, default_url: str) -> str:
    """The URL to migrate: ``-x url``, then ``sqlalchemy.url``, then
    ``url_variable`` from the environment, then ``default_url``."""
    return (
        context.get_x_argument(as_dictionary=True).get(URL_ARGUMENT)
        or context.config.get_main_option("sqlalchemy.url")
        or os.environ.get(url_variable)
        or default_url
    )


def run_migrations(
    target_metadata: sa.MetaData | Mapping[str, sa.MetaData],
    *,
    url_variable: str,
    default_url: str,
    version_table: str = "alembic_version",
) -> None:
    """Run the migrations Alembic was asked for, online or offline (``--sql``).

    ``target_metadata`` is the database's tables: one ``MetaData``, or one per
    module (then ``-x module`` may narrow autogenerate to one of them).
    ``version_table``: an environment that shares its database with another
    keeps its history in a table of its own.
    """
    metadatas, include_object = _narrowed(target_metadata)
    url = database_url(url_variable=url_variable, default_url=default_url)
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=metadatas,
            include_object=include_object,
            literal_binds=True,
            render_as_batch=True,
            version_table=version_table,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=metadatas,
                include_object=include_object,
                # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
                render_as_batch=connection.dialect.name == "sqlite",
                version_table=version_table,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _narrowed(
    target_metadata: sa.MetaData | Mapping[str, sa.MetaData],
) -> tuple[list[sa.MetaData], Any]:
    """The metadata to compare against, and the filter that leaves other
    modules' tables alone when ``-x module`` names one."""
    if isinstance(target_metadata, sa.MetaData):
        return [target_metadata], None
    module = context.get_x_argument(as_dictionary=True).get(MODULE_ARGUMENT)
    if not module:
        return list(target_metadata.values()), None
    if module not in target_metadata:
        raise CommandError(
            f"-x {MODULE_ARGUMENT}={module}: no such module; one of {sorted(target_metadata)}"
        )
    tables = target_metadata[module].tables

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return type_ != "table" or name in tables

    return [target_metadata[module]], include_object
