"""The mover's own record of a move, kept in the target database: its phase,
the backfill's checkpoint, the lease that keeps a second mover out, and the
last verification's verdict.

It lives in the target so that a chunk and the checkpoint that says it was
copied commit in one transaction: after a kill, the backfill resumes exactly
after the last chunk that landed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from datamover.dialects import DONE
from servicekit.errors import Conflict

logger = logging.getLogger(__name__)

#: How long a starting mover waits for a database too busy to take its state
#: table (SQLite's one writer, under a seed) before it gives up.
BOOT_PATIENCE_SECONDS = 30.0

__all__ = [
    "DONE",
    "Completion",
    "LeaseHeld",
    "LeaseLost",
    "MoveState",
    "StateStore",
    "goals_table",
    "moves_table",
]

IDLE, BACKFILL, STREAMING, STOPPED, FAILED = "idle", "backfill", "streaming", "stopped", "failed"
#: The journey's end: the target owns everything for good, the source's copy is archived.
COMPLETED = "completed"
RUNNING_PHASES = (BACKFILL, STREAMING)
ALL_PHASES = (IDLE, BACKFILL, STREAMING, STOPPED, FAILED, COMPLETED)

_metadata = sa.MetaData()
moves_table = sa.Table(
    "strangler_moves",
    _metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("phase", sa.String(20), nullable=False),
    sa.Column("cursors", sa.Text, nullable=False),
    sa.Column("rows_copied", sa.BigInteger, nullable=False),
    sa.Column("rows_total", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("backfilled_at", sa.Float, nullable=True),
    sa.Column("holder", sa.String(200), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("verdict", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)
#: The ownership an operator asked for (the fence converges the databases to it).
goals_table = sa.Table(
    "strangler_ownership_goals",
    _metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("service_buckets", sa.Integer, nullable=False),
    sa.Column("plans", sa.String(20), nullable=False),
    sa.Column("set_at", sa.Float, nullable=False),
)

#: A move that was completed: when, and how its source's archive went.
completions_table = sa.Table(
    "strangler_completions",
    _metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("completed_at", sa.Float, nullable=False),
    sa.Column("archived_at", sa.Float, nullable=True),
    sa.Column("archive_error", sa.Text, nullable=True),
)


@dataclasses.dataclass(frozen=True)
class Completion:
    completed_at: float
    archived_at: float | None
    archive_error: str | None


class LeaseHeld(Conflict):
    """Another mover runs this move on the same databases."""

    code = "lease_held"

    def __init__(self, holder: str, until: float) -> None:
        super().__init__(
            f"another mover holds this move: {holder} (lease until "
            f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC); stop it first"
        )
        self.holder = holder


class LeaseLost(Exception):
    """This mover's lease lapsed before it could write: another may be writing now."""


@dataclasses.dataclass
class MoveState:
    name: str
    phase: str = IDLE
    cursors: dict[str, Any] = dataclasses.field(default_factory=dict)
    rows_copied: int = 0
    rows_total: int = 0
    started_at: float | None = None
    backfilled_at: float | None = None
    holder: str | None = None
    lease_until: float | None = None
    verdict: dict[str, Any] | None = None
    error: str | None = None

    def cursor(self, table: str) -> Any:
        """A table's checkpoint, as the dialect wrote it (None: not begun; DONE)."""
        return self.cursors.get(table)


class StateStore:
    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._name = name
        deadline = time.monotonic() + BOOT_PATIENCE_SECONDS
        while True:
            try:
                _metadata.create_all(engine, checkfirst=True)
                return
            except sa.exc.OperationalError as exc:  # "database is locked": wait our turn
                if time.monotonic() > deadline:
                    raise
                logger.warning(
                    "the mover's state table cannot be made yet (%s): retrying", exc.orig
                )
                time.sleep(0.5)

    def load(self, connection: Connection | None = None) -> MoveState:
        if connection is None:
            with self._engine.connect() as fresh:
                return self.load(fresh)
        row = connection.execute(
            sa.select(moves_table).where(moves_table.c.name == self._name)
        ).first()
        if row is None:
            return MoveState(self._name)
        values = dict(row._mapping)
        values["cursors"] = json.loads(values["cursors"])
        values["verdict"] = json.loads(values["verdict"]) if values["verdict"] else None
        return MoveState(**values)

    def _ensure_row(self, connection: Connection) -> None:
        # One statement that writes: on SQLite it takes the write lock before it
        # reads, so two writers queue on the busy timeout instead of failing.
        t = moves_table
        fresh = sa.select(
            sa.literal(self._name), sa.literal(IDLE), sa.literal("{}"), sa.literal(0), sa.literal(0)
        ).where(~sa.exists().where(t.c.name == self._name))
        connection.execute(
            t.insert().from_select(["name", "phase", "cursors", "rows_copied", "rows_total"], fresh)
        )

    def update(self, connection: Connection | None = None, **values: Any) -> None:
        """Write fields of the state; inside ``connection``'s transaction when given."""
        if connection is None:
            with self._engine.begin() as fresh:
                self.update(fresh, **values)
                return
        if "cursors" in values:
            values["cursors"] = json.dumps(values["cursors"])
        if "verdict" in values and values["verdict"] is not None:
            values["verdict"] = json.dumps(values["verdict"])
        self._ensure_row(connection)
        connection.execute(
            moves_table.update().where(moves_table.c.name == self._name).values(**values)
        )

    def acquire(self, holder: str, seconds: float) -> None:
        """Take or renew the lease; :class:`LeaseHeld` while another live mover has it."""
        now = time.time()
        with self._engine.begin() as connection:
            self._ensure_row(connection)
            t = moves_table.c
            taken = connection.execute(
                moves_table.update()
                .where(
                    t.name == self._name,
                    sa.or_(t.holder.is_(None), t.holder == holder, t.lease_until < now),
                )
                .values(holder=holder, lease_until=now + seconds)
            ).rowcount
            if taken != 1:
                row = connection.execute(
                    sa.select(t.holder, t.lease_until).where(t.name == self._name)
                ).one()
                if not _died_on_this_host(row.holder):
                    raise LeaseHeld(row.holder, row.lease_until)
                # Its process is gone (SIGKILLed, say): waiting out its lease
                # would only hold the users of a handover it left half-way.
                connection.execute(
                    moves_table.update()
                    .where(t.name == self._name, t.holder == row.holder)
                    .values(holder=holder, lease_until=now + seconds)
                )
                logger.warning(
                    "move %s: took the lease of %s, whose process is gone", self._name, row.holder
                )

    def fence(self, connection: Connection, holder: str, seconds: float) -> None:
        """Renew the lease as the first write of ``connection``'s transaction,
        or raise :class:`LeaseLost`.

        The transaction then holds the lease row (SQLite: the write lock;
        PostgreSQL: the row lock) until it commits: a mover that stalled past
        its lease — and so may be about to write rows it read before another
        mover took over — is refused here instead, and its rows never land.
        """
        now = time.time()
        t = moves_table.c
        renewed = connection.execute(
            moves_table.update()
            .where(t.name == self._name, t.holder == holder, t.lease_until >= now)
            .values(lease_until=now + seconds)
        ).rowcount
        if renewed != 1:
            raise LeaseLost(f"the lease of move {self._name} is no longer {holder}'s")

    def release(self, holder: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                moves_table.update()
                .where(moves_table.c.name == self._name, moves_table.c.holder == holder)
                .values(holder=None, lease_until=None)
            )

    def save_goal(self, service_buckets: int, plans: str) -> None:
        t = goals_table
        with self._engine.begin() as connection:
            connection.execute(t.delete().where(t.c.name == self._name))
            connection.execute(
                t.insert().values(
                    name=self._name,
                    service_buckets=service_buckets,
                    plans=plans,
                    set_at=time.time(),
                )
            )

    def load_goal(self) -> tuple[int, str] | None:
        """(service_buckets, plans) as last asked for; None before any request."""
        t = goals_table
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(t.c.service_buckets, t.c.plans).where(t.c.name == self._name)
            ).first()
        return None if row is None else (int(row.service_buckets), str(row.plans))

    def complete(self, connection: Connection) -> None:
        """Record the completion, in the transaction that ends the move."""
        t = completions_table
        connection.execute(t.delete().where(t.c.name == self._name))
        connection.execute(t.insert().values(name=self._name, completed_at=time.time()))
        self.update(connection, phase=COMPLETED, holder=None, lease_until=None)

    def archived(self, *, error: str | None) -> None:
        t = completions_table
        with self._engine.begin() as connection:
            connection.execute(
                t.update()
                .where(t.c.name == self._name)
                .values(archived_at=None if error else time.time(), archive_error=error)
            )

    def load_completion(self) -> Completion | None:
        t = completions_table
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(t.c.completed_at, t.c.archived_at, t.c.archive_error).where(
                    t.c.name == self._name
                )
            ).first()
        return None if row is None else Completion(*row)


def holder_name() -> str:
    """Who holds a lease: ``host:pid:nonce`` (the nonce tells two runs of one PID apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _died_on_this_host(holder: str | None) -> bool:
    """Whether ``holder`` was a process of this host that no longer runs (a
    zombie counts as gone). On another host only its lease can tell."""
    host, _, rest = (holder or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    pid = int(pid_text)
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
