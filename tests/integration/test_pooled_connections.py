"""A pooled PostgreSQL connection whose server side went away is replaced
before a request uses it, without a ping at every checkout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from servicekit import db


@pytest.fixture
def engine(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    engine = db.create_engine(pg_url, pool_size=1)
    yield engine
    engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def terminate(pg_url: str, pid: int) -> None:
    other = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with other.connect() as connection:
        connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    other.dispose()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ping the pool sends, in order."""
    seen: list[object] = []
    real = db._ping

    def counted(dbapi_connection: object) -> None:
        seen.append(dbapi_connection)
        real(dbapi_connection)

    monkeypatch.setattr(db, "_ping", counted)
    return seen


def test_a_connection_killed_while_idle_is_replaced_before_use(engine, pg_url, pings):
    killed = backend_pid(engine)
    terminate(pg_url, killed)
    time.sleep(0.3)  # idle for longer than the threshold: the condition under test

    assert backend_pid(engine) != killed  # no error: the ping found it dead, the pool reconnected
    assert len(pings) == 1


def test_a_connection_in_steady_use_is_not_pinged(engine, pings):
    for _ in range(20):
        backend_pid(engine)

    assert pings == []
