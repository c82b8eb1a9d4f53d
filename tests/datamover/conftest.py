"""Fixtures: ``pair`` — the monolith's and the billing service's databases,
built by their own migrations, the monolith's seeded with billing data, on
SQLite and on PostgreSQL — and ``mover``, the data mover's app on them.

Migrating and seeding happen once per backend; each test gets fresh copies
(PostgreSQL's CREATE DATABASE … TEMPLATE, a file copy for SQLite)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from datamover.app import create_app, runners_of
from tests.conftest import BACKENDS
from tests.datamover.support import FAST, Pair, seed
from tests.support import postgres
from tests.support.databases import fresh_database, migrate


@pytest.fixture(scope="session", params=BACKENDS)
def templates(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Migrated (and, for the monolith, seeded) databases to copy from."""
    directory = tmp_path_factory.mktemp("mover_templates")
    with (
        fresh_database(request.param, directory, "tpl_source") as source,
        fresh_database(request.param, directory, "tpl_target") as target,
    ):
        migrate("monolith", source)
        migrate("billing_service", target)
        seed(source)
        if request.param == "sqlite":
            for url in (source, target):  # one self-contained file each: no WAL beside it
                engine = sa.create_engine(url)
                with engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
                engine.dispose()
        yield Pair(request.param, source, target)


def _copy(template: str, directory: Path, name: str) -> str:
    if template.startswith("sqlite"):
        path = directory / f"{name}.db"
        shutil.copyfile(sa.engine.make_url(template).database or "", path)
        return f"sqlite:///{path}"
    return postgres.create_database(f"strangler_{name}", template=template)


@pytest.fixture
def pair(templates: Pair, tmp_path: Path) -> Iterator[Pair]:
    """Both databases, fresh for this test."""
    copies = Pair(
        templates.backend,
        _copy(templates.source, tmp_path, "mover_source"),
        _copy(templates.target, tmp_path, "mover_target"),
    )
    yield copies
    if copies.backend == "postgres":
        postgres.drop_database(copies.source)
        postgres.drop_database(copies.target)


@pytest.fixture
def mover(pair: Pair) -> Iterator[Flask]:
    """The data mover's app on ``pair``; its moves stop with the test."""
    app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **FAST})
    yield app
    for runner in runners_of(app).values():
        runner.close()
