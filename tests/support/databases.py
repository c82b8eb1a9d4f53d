"""Databases for tests, built by the real migrations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from tests.support import postgres
from tests.support.processes import ROOT


def alembic_config(environment: str, url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"), ini_section=environment)
    config.set_main_option("sqlalchemy.url", url)
    return config


def migrate(environment: str, url: str, revision: str = "heads") -> None:
    command.upgrade(alembic_config(environment, url), revision)


@contextlib.contextmanager
def fresh_database(backend: str, directory: Path, name: str) -> Iterator[str]:
    """An empty database on ``backend`` ("sqlite" or "postgres"), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / (name + '.db')}"
        return
    postgres.require_postgres()
    url = postgres.create_database(f"strangler_{name}")
    try:
        yield url
    finally:
        postgres.drop_database(url)


def empty_tables(engine: sa.Engine, metadatas: list[sa.MetaData]) -> None:
    """Delete every row, children first: a clean slate without re-migrating."""
    with engine.begin() as connection:
        for metadata in metadatas:
            for table in reversed(metadata.sorted_tables):
                connection.execute(table.delete())
