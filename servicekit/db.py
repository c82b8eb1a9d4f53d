"""Engines, metadata and column types shared by every database of the project.

SQLite is the embedded default and PostgreSQL the real deployment; everything
database-specific about the two lives here so that repositories stay portable.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: Constraint names are part of the schema that migrations manage, so they
#: must be deterministic rather than left to each database to invent.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: How long a SQLite connection waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
DEFAULT_POOL_SIZE = 5
#: A pooled PostgreSQL connection idle for longer than this is pinged before
#: it is handed out again; one in steady use is not (see ``_ping_when_idle``).
PING_AFTER_IDLE_SECONDS = 1.0
_READ_ONLY = "strangler_read_only"
_RETURNED_AT = "strangler_returned_at"


def new_metadata() -> sa.MetaData:
    """A MetaData with the project's naming convention; one per module."""
    return sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC when it leaves the database.

    SQLite has no timezone-aware type and hands back naive datetimes; this
    type makes both databases answer the same.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def create_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """Build an engine for ``url`` that behaves the same on SQLite and PostgreSQL.

    On SQLite every transaction starts with ``BEGIN IMMEDIATE``: a writer takes
    the write lock up front instead of failing half way when another
    connection wrote first, which is what PostgreSQL's row locks give the
    repositories for free. WAL lets readers go on while one connection writes.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        _make_sqlite_behave(engine)
        return engine
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size)
    _ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before reuse, if it sat idle in the pool.

    ``pool_pre_ping`` pings at every checkout, and a billing write checks out
    several times (idempotency record, unit of work, ownership check…): a
    round trip each, a fifth of the write's database time. A connection that
    was in use a moment ago is as alive as a ping would say; one that sat idle
    is where a restarted server or a dropped socket shows, so only those are
    pinged. A failed ping makes the pool connect anew (DisconnectionError);
    a server restarted within the last ``idle_seconds`` of a connection's use
    is met by the statement instead, which invalidates the whole pool once.
    """

    @sa.event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # new, or in use a moment ago
        try:
            _ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _ping(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SELECT 1")
    cursor.close()
    dbapi_connection.rollback()  # the ping must not leave a transaction open


def _make_sqlite_behave(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def reader(engine: Engine) -> Engine:
    """The same engine for transactions that only read.

    On SQLite they begin DEFERRED: under WAL a reader never waits for the
    writer, so a facade read inside another module's write transaction cannot
    deadlock on the write lock. PostgreSQL is unaffected.
    """
    return engine.execution_options(**{_READ_ONLY: True})


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
