"""PostgreSQL for the tests: a real server, a database per test run.

In CI (``CI=true``) a missing server is a failure; elsewhere the tests that
need it skip with a message that says how to get it.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def admin_engine() -> sa.Engine:
    return sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def require_postgres() -> None:
    try:
        with admin_engine().connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {ADMIN_URL} ({exc.__class__.__name__})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; in CI the PostgreSQL tests must run")
        pytest.skip(message + "; start it or set TEST_POSTGRES_ADMIN_URL to run these tests")


def create_database(prefix: str = "strangler_test", *, template: str | None = None) -> str:
    """Create a database — empty, or a copy of the database at URL ``template``
    (nobody may be connected to it) — and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
    engine = admin_engine()
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    engine.dispose()
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    engine = admin_engine()
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
