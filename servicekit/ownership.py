"""Write ownership of a module's records, per user bucket, while its data moves.

While the data mover carries a module's records between two databases, each
record has exactly one writer: the side its *slot* is owned by. A user's
records share the user's canary bucket (0..99, the same formula the proxy
routes by); records of no user (billing's plans) share :data:`TABLE_SLOT`.

Each side's database holds an ownership table (``<module>_ownership``: slot,
owner, state, epoch) that the mover writes and the app only reads. An empty
table means no move is under way: this side owns everything, as before.

The check runs twice per request, on purpose:

- in a ``before_request`` hook (:meth:`OwnershipGuard.protect`), before an
  idempotency key is reserved, so that a refusal is never stored as the
  key's reply (the proxy retries the other side, or later);
- inside the write's own transaction, as its first statement
  (:meth:`OwnershipGuard.check_in_transaction`, the unit of work's
  ``on_begin``). On SQLite that transaction holds the write lock, and on
  PostgreSQL the slot's row is read ``FOR SHARE``, so the mover's flip of the
  slot waits for every write that passed the check: each accepted write
  commits before the fence's drain point, and is carried across by it.
"""

from __future__ import annotations

import contextvars
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from servicekit.buckets import USER_BUCKETS, bucket
from servicekit.db import UTCDateTime, reader
from servicekit.errors import Conflict, DependencyUnavailable, Gone, RuleViolated
from servicekit.web import error_response

__all__ = [
    "ACTING_USER_HEADER",
    "MONOLITH",
    "MOVING",
    "OWNED",
    "RETIRED",
    "SERVICE",
    "SLOTS",
    "TABLE_SLOT",
    "USER_BUCKETS",
    "ActingUserRequired",
    "NotOwner",
    "OwnershipGuard",
    "OwnershipMoving",
    "Retired",
    "acting_scope",
    "bucket",
    "ownership_table",
]

#: The demo's stand-in for an authenticated identity (the proxy routes by it too).
ACTING_USER_HEADER = "X-User-ID"
MAX_USER_ID_LENGTH = 64
#: Buckets 0..99 hold users' records (servicekit.buckets); slot 100 the records of no user.
TABLE_SLOT = USER_BUCKETS
SLOTS = tuple(range(USER_BUCKETS + 1))
MONOLITH, SERVICE = "monolith", "service"
OWNED, MOVING = "owned", "moving"
#: The state of every slot on the side a module was decommissioned from.
RETIRED = "retired"
#: The table Alembic keeps in every database it migrated.
MIGRATED_MARK = "alembic_version"
#: Seconds a client (the proxy) should wait before retrying a moving slot.
RETRY_AFTER_SECONDS = 1

# The slot the current request acts on; the unit of work checks it again
# inside its transaction. None outside a checked request (event handlers).
_acting_slot: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "strangler_acting_slot", default=None
)
_acting_user: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "strangler_acting_user", default=None
)


def ownership_table(metadata: sa.MetaData, owner: str) -> sa.Table:
    """The ownership table of module ``owner``: one row per slot while data moves."""
    return sa.Table(
        f"{owner}_ownership",
        metadata,
        sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(20), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )


def acting_scope(scope: str) -> str:
    """An idempotency scope that moves with the acting user (unchanged without one).

    The data mover attributes a key to the user after the last ``:``, so a
    payment retried after its user moved finds its stored reply on the new side.
    """
    user = _acting_user.get()
    return scope if user is None else f"{scope}:{user}"


class NotOwner(Conflict):
    """The other side owns these records now; nothing was applied here."""

    code = "not_owner"
    remembered = False


class OwnershipMoving(DependencyUnavailable):
    """These records are being handed to the other side; retry in a moment."""

    code = "ownership_moving"
    remembered = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class Retired(Gone):
    """This side gave the module up for good (decommissioned): ask its new home."""

    code = "decommissioned"
    remembered = False


class ActingUserRequired(RuleViolated):
    code = "acting_user_required"
    remembered = False


class OwnershipGuard:
    """Refuses requests for records this side does not own (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        table: sa.Table,
        *,
        side: str,
        group: str,
        table_paths: tuple[str, ...] = (),
    ) -> None:
        """``table_paths``: path prefixes whose records belong to no user (slot 100)."""
        self._engine = engine
        self._reads = reader(engine)
        self._table = table
        # Decommissioning is one-way: once seen, never asked again.
        self._retired = False
        self._archived = False
        self._side = side
        self._group = group
        self._table_paths = table_paths

    # --- the request hook -------------------------------------------------------

    def protect(self, blueprint: Blueprint) -> None:
        """Check every request of ``blueprint`` before its view runs."""
        blueprint.before_request(self._admit)
        blueprint.teardown_request(self._forget)
        blueprint.register_error_handler(sa.exc.DBAPIError, self._archived_meanwhile)

    def _archived_meanwhile(self, error: sa.exc.DBAPIError) -> Response:
        """A view's query failed: 410 if the tables were archived (a read that
        names no user is not checked beforehand), the error otherwise."""
        if not self.archived():
            raise error
        gone = self._gone()
        return error_response(410, gone.message, code=gone.code, fields=gone.details)

    def _admit(self) -> None:
        user = request.headers.get(ACTING_USER_HEADER) or None
        if user is not None and len(user) > MAX_USER_ID_LENGTH:
            raise ActingUserRequired(
                f"{ACTING_USER_HEADER} is at most {MAX_USER_ID_LENGTH} characters"
            )
        slot = self.slot_for(request.method, request.path, user)
        _acting_user.set(user)
        _acting_slot.set(slot)
        if self._retired:
            raise self._gone()
        if slot is None and request.method in ("GET", "HEAD", "OPTIONS"):
            # Served from this side's copy, with no query of ours (lists are
            # measured by the statement); once the tables are archived, the
            # read itself fails and is told apart below.
            return
        try:
            with self._reads.connect() as connection:
                if slot is None:
                    self._admit_unplaced(connection)
                else:
                    self._check(connection, slot, lock=False)
        except sa.exc.DBAPIError:
            if self.archived():  # the decommission's migration took the tables away
                raise self._gone() from None
            raise

    def _admit_unplaced(self, connection: sa.Connection) -> None:
        """A write that names no user."""
        first = connection.execute(sa.select(self._table.c.state).limit(1)).first()
        if first is None:
            return  # no move under way
        if first.state == RETIRED:
            self._retired = True
            raise self._gone()
        raise ActingUserRequired(
            f"{ACTING_USER_HEADER} is required while {self._group}'s data moves: "
            "a write must name the user whose records it changes"
        )

    # --- decommissioned -----------------------------------------------------------

    def retired(self) -> bool:
        """Whether this side gave the module up for good: its ownership rows
        say ``retired`` (the decision), or its tables are archived already."""
        if self._retired:
            return True
        try:
            with self._reads.connect() as connection:
                row = connection.execute(
                    sa.select(self._table.c.slot).where(self._table.c.state == RETIRED).limit(1)
                ).first()
        except sa.exc.DBAPIError:
            row = None
            if not self.archived():
                raise
            self._retired = True
        self._retired = self._retired or row is not None
        return self._retired

    def archived(self) -> bool:
        """Whether the module's tables have left this migrated database (the
        ownership table is one of them). A database no migration has run on
        yet is not archived: it is empty."""
        if self._archived:
            return True  # archiving is one-way, like retiring
        with self._engine.connect() as connection:
            inspector = sa.inspect(connection)
            gone = not inspector.has_table(self._table.name) and inspector.has_table(MIGRATED_MARK)
        self._archived = gone
        self._retired = self._retired or gone
        return gone

    def _gone(self) -> Retired:
        return Retired(
            f"{self._group} moved to its own service and was decommissioned here; "
            f"send {self._group}'s requests to the service (the proxy does)",
            side=self._side,
        )

    def _forget(self, _error: BaseException | None) -> None:
        _acting_user.set(None)
        _acting_slot.set(None)

    def slot_for(self, method: str, path: str, user: str | None) -> int | None:
        """The slot a request acts on; None for a request that names no user."""
        if any(path.startswith(prefix) for prefix in self._table_paths):
            return TABLE_SLOT
        if user is None:
            return None
        return bucket(self._group, user)

    # --- inside the write's transaction -----------------------------------------

    def check_in_transaction(self, session: Session) -> None:
        """The unit of work's first statement: the same check, now fenced."""
        slot = _acting_slot.get()
        if slot is not None:
            self._check(session.connection(), slot, lock=True)

    # --- the check ----------------------------------------------------------------

    def _check(self, connection: sa.Connection, slot: int, *, lock: bool) -> None:
        t = self._table
        query = sa.select(t.c.owner, t.c.state, t.c.epoch).where(t.c.slot == slot)
        if lock:
            # PostgreSQL: the mover's UPDATE of this row waits for our commit.
            # SQLite ignores it; its BEGIN IMMEDIATE already serialises the two.
            query = query.with_for_update(read=True)
        row = connection.execute(query).first()
        if row is None:
            return  # no move under way: this side owns everything
        what = "records of no user" if slot == TABLE_SLOT else f"bucket {slot}'s records"
        if row.state == RETIRED:
            self._retired = True
            raise self._gone()
        if row.state == MOVING:
            raise OwnershipMoving(
                f"{self._group}'s {what} are moving between the monolith and the service; "
                f"retry in {RETRY_AFTER_SECONDS}s",
                slot=slot,
            )
        if row.owner != self._side:
            raise NotOwner(
                f"the {row.owner} owns {self._group}'s {what}; nothing was applied here",
                slot=slot,
                owner=row.owner,
                epoch=row.epoch,
            )
