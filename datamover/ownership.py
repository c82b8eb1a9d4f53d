"""Who may write which records, and the fence that hands them over.

Each side's database has an ownership table (servicekit.ownership: one row
per slot — user buckets 0..99 and slot 100 for records of no user — with
owner, state and epoch). The apps only read it: a request for a slot another
side owns is refused (409 ``not_owner``), one for a slot that is ``moving``
is told to retry (503). The mover is its only writer.

The desired state is two numbers an operator (the proxy's admin API) sets:
``service_buckets`` N (buckets below N belong to the service, the canary's
rule) and who owns ``plans``. :class:`Fence` converges the actual ownership
to it, one handover at a time:

1. the slots that change owner are marked ``moving`` in both databases (on
   PostgreSQL the UPDATE waits for every write that checked the slot ``FOR
   SHARE``; on SQLite both take the write lock), so from then on no side
   accepts a write for them;
2. at ``t``, just after that commit, the fence waits until both streams have
   applied every change committed before ``t``: every write the old owner
   accepted is now in the new owner's database;
3. the slots get their new owner and ``owned``, with a new epoch — in the new
   owner's database first (it starts accepting), then in the old owner's
   (which goes from 503 to 409).

Slots that do not change are never marked. A mover killed between any two
steps leaves slots ``moving`` in one or both databases; the next convergence
finds them and finishes the handover (waiting for both streams again, as
either side may have accepted writes by then).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from datamover.dialects import Dialect, Key
from datamover.metrics import Metrics
from datamover.moves import Belongs, Move
from datamover.schema import TableSpec
from servicekit.db import utcnow
from servicekit.errors import DependencyUnavailable
from servicekit.ownership import (
    MOVING,
    OWNED,
    RETIRED,
    SLOTS,
    TABLE_SLOT,
    USER_BUCKETS,
    bucket,
    ownership_table,
)

__all__ = ["Fence", "Goal", "OwnershipStore", "SlotFinder", "owner_by_goal"]

logger = logging.getLogger(__name__)

#: How long a handover waits for the streams to carry the old owner's writes.
DEFAULT_DRAIN_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Goal:
    """The desired ownership: buckets below ``service_buckets`` and, if
    ``plans`` says so, the records of no user belong to the service."""

    service_buckets: int
    plans: str


def owner_by_goal(goal: Goal, slot: int, *, source: str, target: str) -> str:
    if slot == TABLE_SLOT:
        return goal.plans
    return target if slot < goal.service_buckets else source


@dataclasses.dataclass(frozen=True)
class Slot:
    owner: str
    state: str
    epoch: int


class OwnershipStore:
    """The ownership tables of both databases (the mover is their only writer)."""

    def __init__(
        self,
        move: Move,
        dialect: Dialect,
        writers: dict[str, Engine],
        readers: dict[str, Engine],
    ) -> None:
        """``writers``: per side, an engine whose transactions take the write lock
        first on SQLite (BEGIN IMMEDIATE) — serialised with the apps' writes;
        ``readers``: per side, one whose reads take no lock."""
        self._move = move
        self._dialect = dialect
        self._writers = writers
        self._readers = readers
        self._table = ownership_table(sa.MetaData(), move.name)

    @property
    def sides(self) -> tuple[str, str]:
        return (self._move.source_side, self._move.target_side)

    def read(self, side: str, connection: Connection | None = None) -> dict[int, Slot]:
        if connection is None:
            with self._readers[side].connect() as fresh:
                return self.read(side, fresh)
        t = self._table
        return {
            row.slot: Slot(row.owner, row.state, row.epoch)
            for row in connection.execute(sa.select(t.c.slot, t.c.owner, t.c.state, t.c.epoch))
        }

    def owned_slots(self, side: str, connection: Connection) -> set[int]:
        """The slots ``side``'s database says ``side`` owns (moving or not).

        An empty table means no move has begun: the move's source side owns
        everything, the target nothing."""
        slots = self.read(side, connection)
        if not slots:
            return set(SLOTS) if side == self._move.source_side else set()
        return {slot for slot, row in slots.items() if row.owner == side}

    def initialise(self) -> None:
        """Give every slot a row (owned by the source side) in both databases."""
        for side in self.sides:
            if len(self.read(side)) == len(SLOTS):
                continue  # the usual case: no lock, not even a short one
            with self._writers[side].begin() as connection:
                if self._dialect.name == "postgresql":
                    # A write that checked the empty table holds ROW SHARE on it
                    # until it commits: this waits for every such write.
                    connection.exec_driver_sql(f'LOCK TABLE "{self._table.name}" IN EXCLUSIVE MODE')
                present = set(self.read(side, connection))
                missing = [slot for slot in SLOTS if slot not in present]
                if missing:
                    connection.execute(
                        self._table.insert(),
                        [
                            {
                                "slot": slot,
                                "owner": self._move.source_side,
                                "state": OWNED,
                                "epoch": 0,
                                "changed_at": utcnow(),
                            }
                            for slot in missing
                        ],
                    )

    def last_changed(self, side: str) -> dt.datetime | None:
        """When a slot last changed hands or state in ``side``'s database."""
        with self._readers[side].connect() as connection:
            return connection.execute(sa.select(sa.func.max(self._table.c.changed_at))).scalar()

    def retire(self, side: str, owner: str) -> None:
        """In ``side``'s database: every slot ``owner``'s for good (the decommission).

        Under the same locks as a handover: it waits for every write that
        checked a slot, and from its commit on that side answers 410 Gone."""
        with self._writers[side].begin() as connection:
            connection.execute(
                self._table.update().values(owner=owner, state=RETIRED, changed_at=utcnow())
            )

    def mark_moving(self, slots: Sequence[int]) -> None:
        for side in self.sides:
            with self._writers[side].begin() as connection:
                connection.execute(
                    self._table.update()
                    .where(self._table.c.slot.in_(slots))
                    .values(state=MOVING, changed_at=utcnow())
                )

    def hand_over(self, side: str, owners: dict[int, str], epoch: int) -> None:
        """In ``side``'s database: each slot to its owner, ``owned``, at ``epoch``."""
        t = self._table
        with self._writers[side].begin() as connection:
            for owner in set(owners.values()):
                slots = [slot for slot, to in owners.items() if to == owner]
                connection.execute(
                    t.update()
                    .where(t.c.slot.in_(slots))
                    .values(owner=owner, state=OWNED, epoch=epoch, changed_at=utcnow())
                )


class SlotFinder:
    """The slot of each changed record: read from where the record is, by its ``Belongs``."""

    def __init__(self, move: Move, dialect: Dialect) -> None:
        self._move = move
        self._dialect = dialect

    def slots(
        self, spec: TableSpec, keys: Sequence[Key], connections: Iterable[Connection]
    ) -> dict[Key, int]:
        """Keys found in none of ``connections`` (gone on both sides) are left out."""
        belongs = self._move.belongs.get(spec.name, Belongs())
        if belongs.user_in_key is not None:
            position = spec.key.index(belongs.user_in_key)
            found = {}
            for key in keys:
                scope = str(key[position])
                user = scope.rpartition(":")[2] if ":" in scope else None
                found[key] = TABLE_SLOT if user is None else bucket(self._move.name, user)
            return found
        if belongs.user_column is None and belongs.through is None:
            return {key: TABLE_SLOT for key in keys}
        found = {}
        remaining = list(keys)
        for connection in connections:
            if not remaining:
                break
            for key, user in self._users(connection, spec, belongs, remaining).items():
                found[key] = TABLE_SLOT if user is None else bucket(self._move.name, str(user))
            remaining = [key for key in remaining if key not in found]
        return found

    def _users(
        self, connection: Connection, spec: TableSpec, belongs: Belongs, keys: Sequence[Key]
    ) -> dict[Key, Any]:
        (key_column,) = spec.key  # a record with a user has a one-column key here
        marks = ", ".join([self._dialect.param] * len(keys))
        if belongs.user_column is not None:
            sql = (
                f'SELECT "{key_column}", "{belongs.user_column}" FROM "{spec.name}" '
                f'WHERE "{key_column}" IN ({marks})'
            )
        else:
            assert belongs.through is not None
            column, parent, user_column = belongs.through
            sql = (
                f'SELECT c."{key_column}", p."{user_column}" FROM "{spec.name}" AS c '
                f'JOIN "{parent}" AS p ON p."id" = c."{column}" '
                f'WHERE c."{key_column}" IN ({marks})'
            )
        rows = connection.exec_driver_sql(sql, tuple(key[0] for key in keys)).all()
        return {(row[0],): row[1] for row in rows}


class Fence:
    """Converges the actual ownership to a :class:`Goal` (see the module's docstring)."""

    def __init__(
        self,
        move: Move,
        store: OwnershipStore,
        *,
        wait_for_streams: Callable[[float, float], bool],
        metrics: Metrics,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        """``wait_for_streams(t, timeout)``: True once both streams applied
        every change committed before ``t``."""
        self._move = move
        self._store = store
        self._wait = wait_for_streams
        self._metrics = metrics
        self._drain_timeout = drain_timeout
        self.last_handover: dict[str, Any] | None = None

    def actual(self) -> dict[str, Any]:
        """What both databases say now, as the status shows it."""
        source, target = self._move.source_side, self._move.target_side
        tables = {side: self._store.read(side) for side in (source, target)}
        if not tables[source] and not tables[target]:
            return {"service_buckets": 0, "plans": source, "moving": [], "epoch": 0}
        moving = sorted(
            slot for rows in tables.values() for slot, row in rows.items() if row.state == MOVING
        )
        moving = sorted(set(moving))

        # A slot is the target's once both databases say so.
        def target_owns(slot: int) -> bool:
            return all(
                rows.get(slot, Slot(source, OWNED, 0)).owner == target for rows in tables.values()
            )

        service_buckets = 0
        while service_buckets < USER_BUCKETS and target_owns(service_buckets):
            service_buckets += 1
        return {
            "service_buckets": service_buckets,
            "plans": target if target_owns(TABLE_SLOT) else source,
            "moving": moving,
            "epoch": max(
                (row.epoch for rows in tables.values() for row in rows.values()), default=0
            ),
        }

    def converge(self, goal: Goal) -> bool:
        """One handover towards ``goal``; False when there was nothing to do."""
        source, target = self._move.source_side, self._move.target_side
        self._store.initialise()
        tables = {side: self._store.read(side) for side in (source, target)}
        wanted = {slot: owner_by_goal(goal, slot, source=source, target=target) for slot in SLOTS}
        changing = sorted(
            slot
            for slot in SLOTS
            if any(
                rows[slot].owner != wanted[slot] or rows[slot].state != OWNED
                for rows in tables.values()
            )
        )
        if not changing:
            return False
        # For the log and the status: who had the slots, as the source's table says.
        old = {tables[source][slot].owner for slot in changing}
        new = {wanted[slot] for slot in changing}
        epoch = 1 + max(row.epoch for rows in tables.values() for row in rows.values())
        started = time.monotonic()
        self._store.mark_moving(changing)
        moment = time.time()
        if not self._wait(moment, self._drain_timeout):
            # The slots stay moving (writes to them answer 503): the next attempt
            # finishes the handover once the streams catch up.
            raise DependencyUnavailable(
                f"the streams did not carry every change before the handover within "
                f"{self._drain_timeout:.0f}s; {len(changing)} slots stay moving"
            )
        owners = {slot: wanted[slot] for slot in changing}
        # New owners first: they accept writes from this commit on.
        order = sorted((source, target), key=lambda side: side not in new)
        self._store.hand_over(order[0], owners, epoch)
        held = time.monotonic() - started
        self._store.hand_over(order[1], owners, epoch)
        self._metrics.hold.labels(self._move.name).observe(held)
        self.last_handover = {
            "slots": changing,
            "from": sorted(old),
            "to": sorted(new),
            "epoch": epoch,
            "hold_seconds": round(held, 4),
            "at": time.time(),
        }
        logger.info(
            "move %s: %s slots handed from %s to %s (epoch %s), writes held %.3fs",
            self._move.name,
            len(changing),
            "/".join(sorted(old)),
            "/".join(sorted(new)),
            epoch,
            held,
        )
        return True
