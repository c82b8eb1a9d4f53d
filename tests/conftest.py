"""Fixtures named for what they give: ``monolith`` (the app on a migrated
database, SQLite and PostgreSQL alike), ``client``, ``pg_url``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from monolith import create_app
from monolith.app import system_of
from monolith.bootstrap import MODULE_METADATA
from tests.support import postgres
from tests.support.api import SettledClient
from tests.support.databases import empty_tables, fresh_database, migrate

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """An empty PostgreSQL database for this test session, dropped at the end."""
    postgres.require_postgres()
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="session", params=BACKENDS)
def monolith_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A monolith database built by the real migrations, once per backend."""
    directory = tmp_path_factory.mktemp("monolith")
    with fresh_database(request.param, directory, "monolith") as url:
        migrate("monolith", url)
        yield url


@pytest.fixture
def monolith_config(monolith_database: str) -> dict[str, object]:
    return {"DATABASE_URL": monolith_database, "TESTING": True}


@pytest.fixture
def monolith(monolith_config: dict[str, object]) -> Iterator[Flask]:
    """The monolith app on a clean database.

    Every SQL statement it runs is checked: none may touch the tables of two
    modules (no cross-module joins, in any test).
    """
    app = create_app(monolith_config)
    app.test_client_class = SettledClient
    engine = system_of(app).engine
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    yield app
    sa.event.remove(engine, "before_cursor_execute", record)
    empty_tables(engine, list(MODULE_METADATA.values()))
    engine.dispose()
    crossing = [s for s in statements if len(modules_in(s)) > 1]
    assert not crossing, f"statements crossing module boundaries: {crossing[:3]}"


_TABLE_PREFIX = re.compile(r"\b(" + "|".join(MODULE_METADATA) + r")_[a-z_]+\b")


def modules_in(statement: str) -> set[str]:
    """The modules whose tables a SQL statement names (tables are prefixed by module)."""
    tables = {name for metadata in MODULE_METADATA.values() for name in metadata.tables}
    found = {match.group(0) for match in _TABLE_PREFIX.finditer(statement)}
    return {name.split("_", 1)[0] for name in found if name in tables}


@pytest.fixture
def client(monolith: Flask) -> FlaskClient:
    return monolith.test_client()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]
