"""Idempotency keys: a retried command executes once and replays its reply.

The rules, for a command sent with an ``Idempotency-Key`` header:

- the first request reserves the key (in its own short transaction, so that a
  concurrent request with the same key sees it) and executes;
- the reply is stored *in the same transaction* as the change it reports, so
  a reply exists if and only if the change does;
- a replay with the same body gets the stored status and body, byte for byte;
- the same key with a different body is refused (422), a request arriving
  while the first is still executing is refused (409);
- a request that fails validation never gets this far and stores nothing; an
  unexpected failure releases the key so that the client can retry;
- a reservation abandoned by a crashed process expires after ``lock_timeout``;
- the keys' own transactions are fenced like the command's (``on_begin``, the
  ownership check): the keys are records of the module, moved with it, so a
  side that does not own a user's records — or whose records are being
  handed over — writes none of that user's keys either. Unfenced, a
  reservation released during a handover was deleted on the old side after
  the mover had carried it to the new one: a key stuck "in progress" there,
  and a row on one side only.

Releasing can fail for the same reason the command did: on SQLite a command
that gave up waiting for the write lock (the busy timeout) meets the same
queue when it deletes its reservation. Before, that second failure left the
key "in flight" for the whole ``lock_timeout`` (60 s: seen as a journey test's
payment answering 409 for seconds under load); now a release that fails is
tried again on a background thread, with backoff, until it succeeds or the
reservation would have expired anyway — and it never hides the command's own
error. A 409 in flight says ``Retry-After``.

Expected (domain) failures are stored like successes: retrying an
overpayment gets the same refusal, it does not suddenly succeed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from servicekit.db import UTCDateTime, utcnow
from servicekit.errors import Conflict, DomainError, RuleViolated
from servicekit.uow import UnitOfWork

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "IDEMPOTENCY_KEY_HEADER",
    "IdempotencyKeys",
    "KeyInFlight",
    "KeyReused",
    "Reply",
    "fingerprint",
    "idempotency_table",
]

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
DEFAULT_LOCK_TIMEOUT = dt.timedelta(seconds=60)
#: What a 409 in flight tells the client to wait before asking again.
IN_FLIGHT_RETRY_AFTER_SECONDS = 1
#: The first wait before a failed release is tried again (doubling, at most 2 s).
RELEASE_RETRY_PAUSE = 0.1

_IN_PROGRESS = "in_progress"
_COMPLETED = "completed"

U = TypeVar("U", bound=UnitOfWork)
R = TypeVar("R")


class KeyReused(RuleViolated):
    code = "idempotency_key_reused"


class KeyInFlight(Conflict):
    code = "idempotency_key_in_flight"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers = {"Retry-After": str(IN_FLIGHT_RETRY_AFTER_SECONDS)}


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


def idempotency_table(metadata: sa.MetaData, owner: str) -> sa.Table:
    return sa.Table(
        f"{owner}_idempotency_keys",
        metadata,
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("reserved_at", UTCDateTime(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
    )


def fingerprint(*parts: Any) -> str:
    """A stable hash of a request's meaning (canonical JSON of its parts)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        table: sa.Table,
        *,
        lock_timeout: dt.timedelta = DEFAULT_LOCK_TIMEOUT,
        clock: Callable[[], dt.datetime] = utcnow,
        on_begin: Callable[[Session], None] | None = None,
    ) -> None:
        self._sessions = session_factory
        self._table = table
        self._lock_timeout = lock_timeout
        self._clock = clock
        self._on_begin = on_begin

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One of the keys' own short transactions; ``on_begin`` (the ownership
        fence, as in the command's unit of work) is its first statement."""
        with self._sessions() as session, session.begin():
            if self._on_begin is not None:
                self._on_begin(session)
            yield session

    def run(
        self,
        *,
        scope: str,
        key: str,
        request_fingerprint: str,
        uow: U,
        execute: Callable[[U], R],
        render: Callable[[R], Reply],
        render_error: Callable[[DomainError], Reply],
    ) -> Reply:
        """Execute ``execute(uow)`` once for ``(scope, key)``; return its reply."""
        reserved_at = self._clock()
        stored = self._reserve(scope, key, request_fingerprint, reserved_at)
        if stored is not None:
            return stored
        try:
            with uow:
                uow.hold_commit()
                result = execute(uow)
                if not uow.commit_requested:
                    raise RuntimeError("an idempotent command must commit its unit of work")
                reply = render(result)
                self._complete(uow.session, scope, key, reply)
                uow.release_commit()
                return reply
        except DomainError as refusal:
            if not refusal.remembered:
                self._release(scope, key, reserved_at)
                raise
            reply = render_error(refusal)
            try:
                with self._transaction() as session:
                    self._complete(session, scope, key, reply)
            except DomainError as fenced:
                # the records began to move meanwhile: the reservation, carried
                # over with them, expires on the side that owns them now
                logger.warning("idempotency key %s/%s left reserved: %s", scope, key, fenced)
            raise
        except BaseException:
            self._release(scope, key, reserved_at)
            raise

    def _reserve(
        self, scope: str, key: str, request_fingerprint: str, now: dt.datetime
    ) -> Reply | None:
        t = self._table
        try:
            with self._transaction() as session:
                session.execute(
                    t.insert().values(
                        scope=scope,
                        key=key,
                        fingerprint=request_fingerprint,
                        state=_IN_PROGRESS,
                        reserved_at=now,
                    )
                )
            return None
        except IntegrityError:
            pass
        with self._transaction() as session:
            row = session.execute(
                sa.select(t).where(t.c.scope == scope, t.c.key == key).with_for_update()
            ).one()
            if row.fingerprint != request_fingerprint:
                raise KeyReused(
                    f"{IDEMPOTENCY_KEY_HEADER} {key!r} was already used with a different request"
                )
            if row.state == _COMPLETED:
                return Reply(status=row.response_status, body=row.response_body)
            if now - row.reserved_at < self._lock_timeout:
                raise KeyInFlight(
                    f"a request with {IDEMPOTENCY_KEY_HEADER} {key!r} is still being processed"
                )
            # The first attempt died without an answer: this one takes over.
            logger.warning("taking over abandoned idempotency key %s/%s", scope, key)
            session.execute(
                t.update().where(t.c.scope == scope, t.c.key == key).values(reserved_at=now)
            )
            return None

    def _complete(self, session: Session, scope: str, key: str, reply: Reply) -> None:
        t = self._table
        session.execute(
            t.update()
            .where(t.c.scope == scope, t.c.key == key)
            .values(state=_COMPLETED, response_status=reply.status, response_body=reply.body)
        )

    def _release(self, scope: str, key: str, reserved_at: dt.datetime) -> None:
        """Free the key for a retry; never raises (see the module's docstring)."""
        try:
            self._delete_reservation(scope, key, reserved_at)
        except DomainError as fenced:
            # The user's records began to move after the key was reserved: the
            # reservation went with them, and this side may no longer write it.
            # It expires after ``lock_timeout`` on the side that owns it now.
            logger.warning("idempotency key %s/%s left reserved: %s", scope, key, fenced)
        except sa.exc.DBAPIError as exc:
            logger.warning(
                "releasing idempotency key %s/%s failed (%s); retrying in the background",
                scope,
                key,
                str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
            )
            threading.Thread(
                target=self._release_later,
                args=(scope, key, reserved_at),
                name="idempotency-release",
                daemon=True,
            ).start()

    def _release_later(self, scope: str, key: str, reserved_at: dt.datetime) -> None:
        deadline = time.monotonic() + self._lock_timeout.total_seconds()
        pause = RELEASE_RETRY_PAUSE
        while time.monotonic() < deadline:
            time.sleep(pause)
            try:
                self._delete_reservation(scope, key, reserved_at)
            except DomainError:
                break  # no longer this side's to release
            except sa.exc.DBAPIError:
                pause = min(2.0, pause * 2)
                continue
            logger.info("idempotency key %s/%s released", scope, key)
            return
        logger.warning("idempotency key %s/%s stays reserved until it expires", scope, key)

    def _delete_reservation(self, scope: str, key: str, reserved_at: dt.datetime) -> None:
        # Only this attempt's reservation: one that took the key over after it
        # expired (a later reserved_at) is another request's, executing now.
        t = self._table
        with self._transaction() as session:
            session.execute(
                t.delete().where(
                    t.c.scope == scope,
                    t.c.key == key,
                    t.c.state == _IN_PROGRESS,
                    t.c.reserved_at == reserved_at,
                )
            )
