"""Everything the mover says in SQL, once per database engine.

The mover works between two databases of the same engine — two SQLite files,
or two PostgreSQL databases — and uses each engine's own fast path:

- **SQLite** attaches the source file to the target's connection, so that a
  chunk is one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` inside the engine:
  no row crosses into Python. The target's transaction is begun DEFERRED, so
  reading the attached source never takes its write lock (an IMMEDIATE begin
  would lock every attached file and stall the monolith's writers). Chunks
  are rowid ranges, the source's physical order (``SQLiteDialect.copy_chunk``).
- **PostgreSQL** streams a chunk with binary ``COPY`` from the source into a
  temporary table on the target, then merges it with one ``INSERT … ON
  CONFLICT DO UPDATE``. The target session runs with
  ``session_replication_role = replica``, as logical replication does:
  foreign keys and triggers are the source's business, already enforced there.

Change capture is a trigger per table and operation that writes the changed
row's key (never its values) to ``strangler_changes`` in the source database;
the mover reads the *current* row when it applies the change, so an older
image can never overwrite a newer one.
"""

from __future__ import annotations

import abc
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from datamover.schema import TableSpec

__all__ = ["APPLYING_TABLE", "CHANGES_TABLE", "DONE", "Dialect", "Key", "dialect_for"]

CHANGES_TABLE = "strangler_changes"
#: SQLite's loop prevention: the mover's applying transaction holds one row
#: here (inserted first, deleted before commit) and every capture trigger is
#: ``WHEN NOT EXISTS`` a row. SQLite has one writer at a time, so only the
#: mover's own transaction ever sees its uncommitted marker.
APPLYING_TABLE = "strangler_applying"
#: How long a SQLite connection waits for a lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: The page cache of the mover's SQLite connections, per attached file (KiB).
#: SQLite's default (2 MiB) is much smaller than the indexes a chunk inserts
#: into in key order scattered over the whole index: at 1M invoices a larger
#: cache is what kept the backfill's writes from re-reading index pages.
SQLITE_CACHE_KIB = 65_536
#: A table's checkpoint once its backfill has finished.
DONE = "done"

Key = tuple[Any, ...]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cols(spec: TableSpec, prefix: str = "") -> str:
    return ", ".join(prefix + _q(c) for c in spec.columns)


def _key_cols(spec: TableSpec, prefix: str = "") -> str:
    cols = ", ".join(prefix + _q(c) for c in spec.key)
    return cols if len(spec.key) == 1 else f"({cols})"


def _upsert_tail(spec: TableSpec) -> str:
    conflict = ", ".join(_q(c) for c in spec.key)
    if not spec.values:
        return f"ON CONFLICT ({conflict}) DO NOTHING"
    assignments = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in spec.values)
    return f"ON CONFLICT ({conflict}) DO UPDATE SET {assignments}"


class Dialect(abc.ABC):
    """One engine's SQL for capture, copy, apply and checksums."""

    name: str
    param: str
    #: The driver's own errors for a lost connection or a lock that did not
    #: come: COPY goes through the driver, so SQLAlchemy does not wrap them.
    transient_errors: tuple[type[Exception], ...] = ()
    #: The change table's columns, in this engine's types.
    changes_columns: str

    # --- connections -----------------------------------------------------------

    @abc.abstractmethod
    def source_engine(self, url: str) -> Engine:
        """The source, for the change table, its triggers and plain reads."""

    @abc.abstractmethod
    def target_engine(self, target_url: str, source_url: str) -> Engine:
        """The target, as a replica: the mover's writes skip foreign keys."""

    @abc.abstractmethod
    def reader_engine(self, url: str) -> Engine:
        """Either side, for verification: read-only transactions."""

    # --- capture ---------------------------------------------------------------

    def install_changes_table(self, source: Connection) -> None:
        """The change table (and what the triggers need), in a transaction of its own.

        Apart from the triggers: DDL on the change table locks it, and a
        writer's trigger inserts into it while holding its own table — a
        transaction that then also replaced that table's trigger would
        deadlock with it. No index beside its key: the mover reads it in key
        order only, and every captured change would pay for one inside the
        monolith's transaction."""
        source.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} ({self.changes_columns})"
        )

    @abc.abstractmethod
    def install_capture(self, source: Connection, specs: Sequence[TableSpec]) -> None:
        """The capture triggers of ``specs`` (after :meth:`install_changes_table`)."""

    @abc.abstractmethod
    def schema_version(self, conn: Connection, tables: Sequence[str]) -> str:
        """A token that changes whenever the columns or keys of ``tables`` may have:
        one cheap query, where comparing both schemas reflects every table."""

    def forget_changes(self, origin: Connection, seqs: Sequence[int]) -> None:
        """Delete applied changes from the change table."""
        origin.exec_driver_sql(
            f"DELETE FROM {CHANGES_TABLE} WHERE seq IN ({', '.join(map(str, seqs))})"
        )

    @abc.abstractmethod
    def remove_capture(self, source: Connection, tables: Sequence[str]) -> None:
        """By table name alone: capture must come off even when a schema changed."""

    @abc.abstractmethod
    def key_text(self, key: Key) -> str:
        """A key as the capture triggers write it."""

    @abc.abstractmethod
    def begin_applying(self, target: Connection) -> None:
        """First statement of a transaction that writes copied rows: not to be captured."""

    @abc.abstractmethod
    def end_applying(self, target: Connection) -> None:
        """Last statement of such a transaction, before its commit."""

    # --- copy and apply --------------------------------------------------------

    @abc.abstractmethod
    def copy_range(
        self,
        target: Connection,
        source: Connection,
        spec: TableSpec,
        lo: Key | None,
        hi: Key | None,
    ) -> int:
        """Make the target's rows with ``lo < key <= hi`` those of the source; rows copied."""

    def copy_chunk(
        self, target: Connection, source: Connection, spec: TableSpec, after: Any, rows: int
    ) -> tuple[int, Any]:
        """Copy the next chunk of about ``rows`` rows after the checkpoint ``after``
        (None: the table's first); (rows it adds to the count, the next checkpoint,
        :data:`DONE` once the table is copied). A checkpoint is plain JSON.

        Here in key order: ``after`` is the last key copied."""
        lo = tuple(after) if after is not None else None
        hi = self.key_position(source, spec, lo, None, rows - 1)
        copied = self.copy_range(target, source, spec, lo, hi)
        return copied, DONE if hi is None else list(hi)

    @abc.abstractmethod
    def apply_keys(
        self, target: Connection, source: Connection, spec: TableSpec, keys: Sequence[Key]
    ) -> None:
        """Make the target's rows for ``keys`` what the source holds now (or absent)."""

    # --- reads shared by both engines -----------------------------------------

    def where_range(
        self, spec: TableSpec, lo: Key | None, hi: Key | None, prefix: str = ""
    ) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        marks = ", ".join([self.param] * len(spec.key))
        marks = marks if len(spec.key) == 1 else f"({marks})"
        if lo is not None:
            parts.append(f"{_key_cols(spec, prefix)} > {marks}")
            params.extend(lo)
        if hi is not None:
            parts.append(f"{_key_cols(spec, prefix)} <= {marks}")
            params.extend(hi)
        return (" AND ".join(parts) or "1 = 1"), params

    def key_after(
        self, conn: Connection, spec: TableSpec, after: Key | None, step: int
    ) -> Key | None:
        """The key ``step`` rows after ``after`` (None when fewer rows remain)."""
        return self.key_position(conn, spec, after, None, step - 1)

    def count(
        self, conn: Connection, spec: TableSpec, lo: Key | None = None, hi: Key | None = None
    ) -> int:
        where, params = self.where_range(spec, lo, hi)
        return int(
            conn.exec_driver_sql(
                f"SELECT count(*) FROM {_q(spec.name)} WHERE {where}", tuple(params)
            ).scalar_one()
        )

    def rows(
        self, conn: Connection, spec: TableSpec, lo: Key | None, hi: Key | None
    ) -> dict[Key, tuple[Any, ...]]:
        where, params = self.where_range(spec, lo, hi)
        result = conn.exec_driver_sql(
            f"SELECT {_cols(spec)} FROM {_q(spec.name)} WHERE {where}", tuple(params)
        )
        positions = [spec.columns.index(c) for c in spec.key]
        return {tuple(row[p] for p in positions): tuple(row) for row in result}

    def rows_by_key(
        self, conn: Connection, spec: TableSpec, keys: Sequence[Key]
    ) -> dict[Key, tuple[Any, ...]]:
        equal = " AND ".join(f"{_q(c)} = {self.param}" for c in spec.key)
        found: dict[Key, tuple[Any, ...]] = {}
        for key in keys:
            row = conn.exec_driver_sql(
                f"SELECT {_cols(spec)} FROM {_q(spec.name)} WHERE {equal}", tuple(key)
            ).first()
            if row is not None:
                found[tuple(key)] = tuple(row)
        return found

    @abc.abstractmethod
    def checksum(
        self, conn: Connection, spec: TableSpec, lo: Key | None, hi: Key | None
    ) -> tuple[int, str]:
        """(rows, an order-independent digest of their values) in ``lo < key <= hi``."""

    def key_position(
        self, conn: Connection, spec: TableSpec, lo: Key | None, hi: Key | None, offset: int
    ) -> Key | None:
        """The key at ``offset`` (0-based) inside ``lo < key <= hi``."""
        where, params = self.where_range(spec, lo, hi)
        order = ", ".join(_q(c) for c in spec.key)
        row = conn.exec_driver_sql(
            f"SELECT {order} FROM {_q(spec.name)} WHERE {where} ORDER BY {order} "
            f"LIMIT 1 OFFSET {int(offset)}",
            tuple(params),
        ).first()
        return tuple(row) if row is not None else None


# --- SQLite ---------------------------------------------------------------------

_EPOCH_NOW_SQLITE = "((julianday('now') - 2440587.5) * 86400.0)"


class _RowDigest:
    """sum(first 8 bytes of md5(row)) mod 2**64: the same for the same rows in any order."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, text: str) -> None:
        digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
        self.total = (self.total + int.from_bytes(digest[:8], "big")) & 0xFFFFFFFFFFFFFFFF

    def finalize(self) -> str:
        return str(self.total)


class SQLiteDialect(Dialect):
    name = "sqlite"
    param = "?"
    transient_errors = (sqlite3.OperationalError,)

    def _engine(
        self, url: str, *, begin: str, foreign_keys: bool, attach: str | None = None
    ) -> Engine:
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # As servicekit.db does: WAL with NORMAL sync is durable across a
            # process kill; a full sync per chunk cost the backfill 38% of its time.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            if attach is not None:
                cursor.execute("ATTACH DATABASE ? AS src", (attach,))
                cursor.execute(f"PRAGMA src.cache_size=-{SQLITE_CACHE_KIB}")
            cursor.close()
            dbapi_connection.create_aggregate("strangler_digest", 1, _RowDigest)

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql(begin)

        return engine

    def source_engine(self, url: str) -> Engine:
        return self._engine(url, begin="BEGIN IMMEDIATE", foreign_keys=True)

    def target_engine(self, target_url: str, source_url: str) -> Engine:
        source_file = sa.engine.make_url(source_url).database
        return self._engine(target_url, begin="BEGIN", foreign_keys=False, attach=source_file)

    def reader_engine(self, url: str) -> Engine:
        return self._engine(url, begin="BEGIN", foreign_keys=True)

    changes_columns = (
        "seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, pk TEXT NOT NULL, "
        "at REAL NOT NULL"
    )

    def install_changes_table(self, source: Connection) -> None:
        super().install_changes_table(source)
        source.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {APPLYING_TABLE} (id INTEGER PRIMARY KEY)"
        )

    def install_capture(self, source: Connection, specs: Sequence[TableSpec]) -> None:
        # Not written by the mover itself: the applied change would come back.
        unless_applying = f"WHEN NOT EXISTS (SELECT 1 FROM {APPLYING_TABLE})"
        for spec in specs:
            table = spec.name

            def key(row: str, spec: TableSpec = spec) -> str:
                return "json_array(" + ", ".join(f"{row}.{_q(c)}" for c in spec.key) + ")"

            def log(key_sql: str, table: str = table) -> str:
                return (
                    f"INSERT INTO {CHANGES_TABLE} (tbl, pk, at) "
                    f"VALUES ('{table}', {key_sql}, {_EPOCH_NOW_SQLITE});"
                )

            on = f"ON {_q(table)} FOR EACH ROW {unless_applying}"
            triggers = {
                "insert": f"AFTER INSERT {on} BEGIN {log(key('NEW'))} END",
                "delete": f"AFTER DELETE {on} BEGIN {log(key('OLD'))} END",
                # A key that changes is two changes: the old key left, the new one arrived.
                "update": (
                    f"AFTER UPDATE {on} BEGIN {log(key('OLD'))} "
                    f"INSERT INTO {CHANGES_TABLE} (tbl, pk, at) SELECT '{table}', {key('NEW')}, "
                    f"{_EPOCH_NOW_SQLITE} WHERE {key('NEW')} <> {key('OLD')}; END"
                ),
            }
            for operation, body in triggers.items():
                name = f"strangler_capture_{table}_{operation}"
                create = f"CREATE TRIGGER {name} {body}"
                # Kept when it is this very trigger: DDL bumps the schema version,
                # which makes a resumed backfill copy its table again (copy_chunk).
                # Replaced otherwise: an older mover's trigger had no WHEN clause.
                held = source.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)
                ).scalar()
                if held == create:
                    continue
                source.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
                source.exec_driver_sql(create)

    def schema_version(self, conn: Connection, tables: Sequence[str]) -> str:
        # The file's schema cookie: any DDL in it changes it.
        return str(conn.exec_driver_sql("PRAGMA main.schema_version").scalar_one())

    def remove_capture(self, source: Connection, tables: Sequence[str]) -> None:
        for table in tables:
            for operation in ("insert", "update", "delete"):
                source.exec_driver_sql(
                    f"DROP TRIGGER IF EXISTS strangler_capture_{table}_{operation}"
                )
        source.exec_driver_sql(f"DROP TABLE IF EXISTS {CHANGES_TABLE}")
        source.exec_driver_sql(f"DROP TABLE IF EXISTS {APPLYING_TABLE}")

    def key_text(self, key: Key) -> str:
        return json.dumps(list(key), separators=(",", ":"), ensure_ascii=False)

    def begin_applying(self, target: Connection) -> None:
        # A write, first: the deferred transaction takes the write lock now.
        target.exec_driver_sql(f"INSERT INTO main.{APPLYING_TABLE} DEFAULT VALUES")

    def end_applying(self, target: Connection) -> None:
        target.exec_driver_sql(f"DELETE FROM main.{APPLYING_TABLE}")

    def copy_range(
        self,
        target: Connection,
        source: Connection,
        spec: TableSpec,
        lo: Key | None,
        hi: Key | None,
    ) -> int:
        table = _q(spec.name)
        where, params = self.where_range(spec, lo, hi)
        outer, outer_params = self.where_range(spec, lo, hi, prefix=f"main.{table}.")
        match = " AND ".join(f"s.{_q(c)} = main.{table}.{_q(c)}" for c in spec.key)
        # Rows that left first: they free unique values the arriving rows take.
        # (The caller's lease fence already took the target's write lock, so the
        # source is read from a snapshot later than every earlier write.)
        target.exec_driver_sql(
            f"DELETE FROM main.{table} WHERE {outer} "
            f"AND NOT EXISTS (SELECT 1 FROM src.{table} AS s WHERE {match})",
            tuple(outer_params),
        )
        copied = target.exec_driver_sql(
            f"INSERT INTO main.{table} ({_cols(spec)}) SELECT {_cols(spec)} FROM src.{table} "
            f"WHERE {where} {_upsert_tail(spec)}",
            tuple(params),
        ).rowcount
        return int(copied)

    def copy_chunk(
        self, target: Connection, source: Connection, spec: TableSpec, after: Any, rows: int
    ) -> tuple[int, Any]:
        """In the source's physical order, by rowid ranges, not in key order.

        Billing's keys are UUIDs: read in key order, each row is a lookup in
        the table's b-tree from its key's index, in random order — 62% of the
        backfill's time at 1M invoices. Read by rowid, a chunk is a run of
        adjacent pages, as a plain ``INSERT … SELECT`` reads them.

        Still every row: capture was on before the first chunk, a row's rowid
        never changes while it exists (an UPDATE keeps it; a row inserted,
        re-inserted or moved after capture began is a captured change), and
        each chunk writes the source's current rows, like any other write of
        the single writer. The one thing that renumbers rowids is ``VACUUM``;
        it also bumps the schema cookie, so a table whose source schema
        version changed since its first chunk is copied again from the
        start. Rows the target holds that the source does not (``--replace``)
        are removed before a table's first chunk, where key ranges removed
        them chunk by chunk. A checkpoint in key order (an older mover's) is
        carried on in key order."""
        table = _q(spec.name)
        if isinstance(after, list) or not self._has_rowid(target, spec):
            return super().copy_chunk(target, source, spec, after, rows)
        version = int(target.exec_driver_sql("PRAGMA src.schema_version").scalar_one())
        counted = 0
        if after is None or after["schema"] != version:
            # The first chunk, or the source was rebuilt: (again) from the start,
            # and the rows counted by the pass before count no more.
            counted = 0 if after is None else -int(after["copied"])
            match = " AND ".join(f"s.{_q(c)} = main.{table}.{_q(c)}" for c in spec.key)
            target.exec_driver_sql(
                f"DELETE FROM main.{table} "
                f"WHERE NOT EXISTS (SELECT 1 FROM src.{table} AS s WHERE {match})"
            )
            after = {"rowid": 0, "schema": version, "copied": 0}
        lo = int(after["rowid"])
        hi = lo + rows
        copied = target.exec_driver_sql(
            f"INSERT INTO main.{table} ({_cols(spec)}) SELECT {_cols(spec)} FROM src.{table} "
            f"WHERE rowid > ? AND rowid <= ? {_upsert_tail(spec)}",
            (lo, hi),
        ).rowcount
        last = target.exec_driver_sql(f"SELECT max(rowid) FROM src.{table}").scalar()
        if last is None or hi >= int(last):
            return counted + copied, DONE
        return counted + copied, {**after, "rowid": hi, "copied": int(after["copied"]) + copied}

    @staticmethod
    def _has_rowid(target: Connection, spec: TableSpec) -> bool:
        """False for a ``WITHOUT ROWID`` table (copied in key order instead)."""
        sql = target.exec_driver_sql(
            "SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (spec.name,)
        ).scalar()
        return "WITHOUT ROWID" not in " ".join(str(sql).upper().split())

    def apply_keys(
        self, target: Connection, source: Connection, spec: TableSpec, keys: Sequence[Key]
    ) -> None:
        table = _q(spec.name)
        equal = " AND ".join(f"{_q(c)} = ?" for c in spec.key)
        match = " AND ".join(f"s.{_q(c)} = ?" for c in spec.key)
        # Deletes first: a row that left frees its unique values for one that arrived.
        target.exec_driver_sql(
            f"DELETE FROM main.{table} WHERE {equal} "
            f"AND NOT EXISTS (SELECT 1 FROM src.{table} AS s WHERE {match})",
            [tuple(key) + tuple(key) for key in keys],
        )
        target.exec_driver_sql(
            f"INSERT INTO main.{table} ({_cols(spec)}) SELECT {_cols(spec)} FROM src.{table} "
            f"WHERE {equal} {_upsert_tail(spec)}",
            [tuple(key) for key in keys],
        )

    def checksum(
        self, conn: Connection, spec: TableSpec, lo: Key | None, hi: Key | None
    ) -> tuple[int, str]:
        where, params = self.where_range(spec, lo, hi)
        row_text = " || '|' || ".join(f"quote({_q(c)})" for c in spec.columns)
        count, digest = conn.exec_driver_sql(
            f"SELECT count(*), strangler_digest({row_text}) FROM {_q(spec.name)} WHERE {where}",
            tuple(params),
        ).one()
        return int(count), str(digest or "0")


# --- PostgreSQL -----------------------------------------------------------------


class PostgresDialect(Dialect):
    name = "postgresql"
    param = "%s"
    transient_errors = (psycopg.OperationalError,)

    def source_engine(self, url: str) -> Engine:
        return sa.create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)

    def target_engine(self, target_url: str, source_url: str) -> Engine:
        engine = sa.create_engine(target_url, pool_size=2, max_overflow=2, pool_pre_ping=True)

        @sa.event.listens_for(engine, "connect")
        def _as_replica(dbapi_connection: Any, _record: Any) -> None:
            # Foreign keys and triggers are implemented as triggers; a replica
            # session skips them. Needs superuser, or (PostgreSQL 15+)
            # GRANT SET ON PARAMETER session_replication_role TO <mover>.
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET session_replication_role = replica")
            dbapi_connection.commit()

        return engine

    def reader_engine(self, url: str) -> Engine:
        return sa.create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)

    changes_columns = (
        "seq bigserial PRIMARY KEY, tbl text NOT NULL, pk text NOT NULL, "
        "at double precision NOT NULL"
    )

    def install_capture(self, source: Connection, specs: Sequence[TableSpec]) -> None:
        _bounded_lock_wait(source)
        for spec in specs:
            table = spec.name

            def key(row: str, spec: TableSpec = spec) -> str:
                return (
                    "jsonb_build_array(" + ", ".join(f"{row}.{_q(c)}" for c in spec.key) + ")::text"
                )

            log = (
                f"INSERT INTO {CHANGES_TABLE} (tbl, pk, at) "
                f"VALUES ('{table}', {{key}}, extract(epoch FROM clock_timestamp()));"
            )
            source.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION strangler_capture_{table}() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN "
                f"IF TG_OP <> 'INSERT' THEN {log.format(key=key('OLD'))} END IF; "
                f"IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND {key('NEW')} <> {key('OLD')}) "
                f"THEN {log.format(key=key('NEW'))} END IF; "
                "RETURN NULL; END $$"
            )
            source.exec_driver_sql(f"DROP TRIGGER IF EXISTS strangler_capture ON {_q(table)}")
            source.exec_driver_sql(
                f"CREATE TRIGGER strangler_capture AFTER INSERT OR UPDATE OR DELETE ON {_q(table)} "
                f"FOR EACH ROW EXECUTE FUNCTION strangler_capture_{table}()"
            )

    def schema_version(self, conn: Connection, tables: Sequence[str]) -> str:
        # Every column (name, type, position) and the primary key of the tables
        # the search path shows, in one catalog query.
        return str(
            conn.exec_driver_sql(
                "SELECT md5(coalesce(string_agg(c.relname || ':' || a.attnum || ':' || "
                "a.attname || ':' || a.atttypid || ':' || a.atttypmod || ':' || "
                "coalesce(k.conkey::text, ''), ',' ORDER BY c.relname, a.attnum), '')) "
                "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
                "AND a.attnum > 0 AND NOT a.attisdropped "
                "LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p' "
                "WHERE c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid) "
                "AND c.relname = ANY(%s)",
                (list(tables),),
            ).scalar_one()
        )

    def forget_changes(self, origin: Connection, seqs: Sequence[int]) -> None:
        # Without waiting for the WAL flush: a forget lost in a crash only
        # applies those changes once more, which is harmless (each is the
        # current row), and the monolith's commits no longer queue behind
        # the mover's on this machine's one disk.
        origin.exec_driver_sql("SET LOCAL synchronous_commit = off")
        super().forget_changes(origin, seqs)

    def remove_capture(self, source: Connection, tables: Sequence[str]) -> None:
        _bounded_lock_wait(source)
        for table in tables:
            source.exec_driver_sql(f"DROP TRIGGER IF EXISTS strangler_capture ON {_q(table)}")
            source.exec_driver_sql(f"DROP FUNCTION IF EXISTS strangler_capture_{table}()")
        source.exec_driver_sql(f"DROP TABLE IF EXISTS {CHANGES_TABLE}")

    def key_text(self, key: Key) -> str:
        return json.dumps(list(key), ensure_ascii=False)  # jsonb's text: ", " between items

    # The applying session is a replica (session_replication_role): ordinary
    # triggers, capture among them, do not fire for its writes. Nothing to mark.
    def begin_applying(self, target: Connection) -> None:
        pass

    def end_applying(self, target: Connection) -> None:
        pass

    def _load(
        self,
        target: Connection,
        source: Connection,
        spec: TableSpec,
        select: str,
        params: list[Any],
    ) -> str:
        """Stream ``select``'s rows from the source into a temporary copy of the table."""
        staging = _q(f"strangler_load_{spec.name}")
        raw_target = target.connection.driver_connection
        raw_source = source.connection.driver_connection
        with raw_target.cursor() as cursor:  # type: ignore[union-attr]
            # Empty: ON COMMIT DELETE ROWS emptied it, and a transaction loads
            # a table at most once. (A TRUNCATE here made a new file for the
            # temporary table on every call: a fifth of a small apply's time.)
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
                f"(LIKE {_q(spec.name)}) ON COMMIT DELETE ROWS"
            )
        with (
            raw_source.cursor() as out_cursor,  # type: ignore[union-attr]
            raw_target.cursor() as in_cursor,  # type: ignore[union-attr]
            out_cursor.copy(f"COPY ({select}) TO STDOUT (FORMAT BINARY)", params) as out,
            in_cursor.copy(f"COPY {staging} ({_cols(spec)}) FROM STDIN (FORMAT BINARY)") as into,
        ):
            for block in out:
                into.write(block)
        return staging

    def _merge(
        self, target: Connection, spec: TableSpec, staging: str, where: str, params: list[Any]
    ) -> int:
        table = _q(spec.name)
        match = " AND ".join(f"s.{_q(c)} = {table}.{_q(c)}" for c in spec.key)
        target.exec_driver_sql(
            f"DELETE FROM {table} WHERE {where} AND NOT EXISTS "
            f"(SELECT 1 FROM {staging} AS s WHERE {match})",
            tuple(params),
        )
        return int(
            target.exec_driver_sql(
                f"INSERT INTO {table} ({_cols(spec)}) SELECT {_cols(spec)} FROM {staging} "
                f"{_upsert_tail(spec)}"
            ).rowcount
        )

    def copy_range(
        self,
        target: Connection,
        source: Connection,
        spec: TableSpec,
        lo: Key | None,
        hi: Key | None,
    ) -> int:
        where, params = self.where_range(spec, lo, hi)
        staging = self._load(
            target, source, spec, f"SELECT {_cols(spec)} FROM {_q(spec.name)} WHERE {where}", params
        )
        outer, outer_params = self.where_range(spec, lo, hi, prefix=f"{_q(spec.name)}.")
        return self._merge(target, spec, staging, outer, outer_params)

    def apply_keys(
        self, target: Connection, source: Connection, spec: TableSpec, keys: Sequence[Key]
    ) -> None:
        one = "(" + " AND ".join(f"{_q(c)} = %s" for c in spec.key) + ")"
        where = " OR ".join([one] * len(keys))
        params = [value for key in keys for value in key]
        staging = self._load(
            target, source, spec, f"SELECT {_cols(spec)} FROM {_q(spec.name)} WHERE {where}", params
        )
        outer = " OR ".join(
            ["(" + " AND ".join(f"{_q(spec.name)}.{_q(c)} = %s" for c in spec.key) + ")"]
            * len(keys)
        )
        self._merge(target, spec, staging, f"({outer})", params)

    def checksum(
        self, conn: Connection, spec: TableSpec, lo: Key | None, hi: Key | None
    ) -> tuple[int, str]:
        where, params = self.where_range(spec, lo, hi)
        row_text = "CAST(ROW(" + _cols(spec) + ") AS text)"
        # The first 64 bits of each row's md5, summed: the same in any order.
        row_hash = f"('x' || substr(md5({row_text}), 1, 16))::bit(64)::bigint"
        count, digest = conn.exec_driver_sql(
            f"SELECT count(*), coalesce(sum({row_hash}), 0)::text "
            f"FROM {_q(spec.name)} WHERE {where}",
            tuple(params),
        ).one()
        return int(count), str(digest)


#: How long a trigger's DDL may wait for its table's lock. Behind a long
#: transaction it would otherwise wait for ever — and every write to the
#: table would queue behind it (the classic online-migration outage).
DDL_LOCK_TIMEOUT = "2s"


def _bounded_lock_wait(source: Connection) -> None:
    source.exec_driver_sql(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")


def dialect_for(source_url: str, target_url: str) -> Dialect:
    """The dialect for a pair of databases; they must be of the same engine."""
    engines = [sa.engine.make_url(url).get_backend_name() for url in (source_url, target_url)]
    if engines[0] != engines[1]:
        raise ValueError(
            f"the mover copies between two databases of the same engine, not {engines[0]} "
            f"to {engines[1]}"
        )
    if engines[0] == "sqlite":
        return SQLiteDialect()
    if engines[0] == "postgresql":
        return PostgresDialect()
    raise ValueError(f"no mover dialect for {engines[0]}")
