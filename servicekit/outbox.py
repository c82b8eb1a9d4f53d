"""The transactional outbox, and the relay that empties it.

A module that publishes integration events owns an outbox table. Events are
written to it in the same transaction as the change they describe, so an
event exists if and only if the change was committed. The relay then hands
each pending event to a *delivery* callable — the in-process event bus in the
monolith, an HTTP post to another deployable's inbox later — and records the
outcome: delivered, retried with exponential backoff, or parked after too
many attempts, where an operator can list and replay it.

Delivery is at least once; consumers make it exactly-once in effect through
their inbox (see :mod:`servicekit.inbox`). Events of one aggregate are
delivered in order: while one is waiting for a retry, the later ones of the
same aggregate wait too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from servicekit.db import UTCDateTime, utcnow
from servicekit.events import Envelope
from servicekit.requestids import bound_request_id, current_request_id

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_MAX_ATTEMPTS",
    "OutboxRelay",
    "PromptDelivery",
    "RelayReport",
    "outbox_table",
    "write_to_outbox",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_BASE = dt.timedelta(milliseconds=500)
DEFAULT_BACKOFF_MAX = dt.timedelta(minutes=5)
DEFAULT_BATCH_SIZE = 200
#: How many events a process's prompt delivery holds at most; beyond, they wait for the relay.
DEFAULT_MAX_QUEUED = 10_000

Deliver = Callable[[Envelope], None]


def outbox_table(metadata: sa.MetaData, owner: str) -> sa.Table:
    """The outbox table of module ``owner``, named ``<owner>_outbox``."""
    return sa.Table(
        f"{owner}_outbox",
        metadata,
        # An integer position gives a total order of publication; the UUID is
        # what travels and what consumers deduplicate on.
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("aggregate_id", sa.String(64), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("parked_at", UTCDateTime(), nullable=True),
        sa.Index(f"ix_{owner}_outbox_pending", "delivered_at", "parked_at", "position"),
        sa.Index(f"ix_{owner}_outbox_aggregate", "aggregate_id", "position"),
    )


def write_to_outbox(session: Session, outbox: sa.Table, envelope: Envelope) -> None:
    """Add ``envelope`` to ``outbox`` inside the caller's transaction."""
    session.execute(
        outbox.insert().values(
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            aggregate_id=envelope.aggregate_id,
            occurred_at=envelope.occurred_at,
            payload=dict(envelope.payload),
            attempts=0,
        )
    )


@dataclasses.dataclass
class RelayReport:
    delivered: int = 0
    failed: int = 0
    parked: int = 0
    deferred: int = 0

    def __iadd__(self, other: RelayReport) -> RelayReport:
        self.delivered += other.delivered
        self.failed += other.failed
        self.parked += other.parked
        self.deferred += other.deferred
        return self


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    """An outbox row as an operator sees it."""

    position: int
    envelope: Envelope
    attempts: int
    delivered_at: dt.datetime | None
    parked_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    last_error: str | None


class OutboxRelay:
    """Delivers the pending events of one outbox, in order per aggregate."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        outbox: sa.Table,
        *,
        source: str,
        deliver: Deliver,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: dt.timedelta = DEFAULT_BACKOFF_BASE,
        backoff_max: dt.timedelta = DEFAULT_BACKOFF_MAX,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._sessions = session_factory
        self._outbox = outbox
        self.source = source
        self._deliver = deliver
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock

    # -- delivering -----------------------------------------------------------

    def relay_pending(self, *, batch_size: int = DEFAULT_BATCH_SIZE) -> RelayReport:
        """Deliver what is due now, oldest first; return what happened."""
        rows = self._pending_rows(batch_size)
        return self._deliver_in_order(rows, set(), RelayReport(), now=self._clock())

    def relay_events(
        self, event_ids: Iterable[str], *, request_ids: Mapping[str, str] | None = None
    ) -> RelayReport:
        """Deliver just these events, right after the transaction that wrote them.

        An event whose aggregate still has an older undelivered event outside
        this batch is left for :meth:`relay_pending`, which keeps the order.
        ``request_ids``: the request that committed each event, current while
        it is delivered (the consumer's log lines carry it).
        """
        report = RelayReport()
        ids = list(event_ids)
        if not ids:
            return report
        o = self._outbox
        with self._sessions() as session:
            rows = session.execute(
                sa.select(o)
                .where(o.c.event_id.in_(ids), o.c.delivered_at.is_(None), o.c.parked_at.is_(None))
                .order_by(o.c.position)
            ).all()
            if not rows:
                return report
            first: dict[str, int] = {}
            for row in rows:
                first.setdefault(row.aggregate_id, row.position)
            # One query for every aggregate of the batch: which has an older
            # event still waiting (a retry in back-off, or one being written)?
            blocked = set(
                session.execute(
                    sa.select(o.c.aggregate_id)
                    .where(
                        sa.or_(
                            *(
                                sa.and_(o.c.aggregate_id == aggregate, o.c.position < position)
                                for aggregate, position in first.items()
                            )
                        ),
                        o.c.delivered_at.is_(None),
                        o.c.parked_at.is_(None),
                    )
                    .distinct()
                ).scalars()
            )
        return self._deliver_in_order(rows, blocked, report, request_ids=request_ids)

    def _deliver_in_order(
        self,
        rows: Sequence[sa.Row[Any]],
        blocked: set[str],
        report: RelayReport,
        *,
        now: dt.datetime | None = None,
        request_ids: Mapping[str, str] | None = None,
    ) -> RelayReport:
        """Deliver ``rows`` in their order, except those of a ``blocked``
        aggregate; a failure, or a retry not due before ``now``, blocks the
        rest of its aggregate.

        What was delivered is marked in one statement at the end: a crash
        before it delivers those events again, which consumers' inboxes absorb
        (delivery is at least once), and saves a transaction per event.
        """
        delivered: list[int] = []
        try:
            for row in rows:
                retry_at = row.next_attempt_at
                if now is not None and retry_at is not None and retry_at > now:
                    blocked.add(row.aggregate_id)
                if row.aggregate_id in blocked:
                    report.deferred += 1
                    continue
                request_id = (request_ids or {}).get(row.event_id)
                try:
                    with bound_request_id(request_id) if request_id else contextlib.nullcontext():
                        self._deliver(self._envelope(row))
                except Exception as exc:  # any failure is recorded and retried, never lost
                    report += self._record_failure(row, exc)
                    blocked.add(row.aggregate_id)
                    continue
                delivered.append(row.position)
        finally:
            self._mark_delivered(delivered)
        report.delivered += len(delivered)
        return report

    def _mark_delivered(self, positions: Sequence[int]) -> None:
        if not positions:
            return
        with self._sessions() as session, session.begin():
            session.execute(
                self._outbox.update()
                .where(self._outbox.c.position.in_(positions))
                .values(delivered_at=self._clock(), last_error=None)
            )

    def _pending_rows(self, limit: int) -> list[sa.Row[Any]]:
        o = self._outbox
        with self._sessions() as session:
            return list(
                session.execute(
                    sa.select(o)
                    .where(o.c.delivered_at.is_(None), o.c.parked_at.is_(None))
                    .order_by(o.c.position)
                    .limit(limit)
                ).all()
            )

    def _record_failure(self, row: sa.Row[Any], exc: Exception) -> RelayReport:
        attempts = row.attempts + 1
        now = self._clock()
        park = attempts >= self._max_attempts
        delay = min(self._backoff_base * (2 ** (attempts - 1)), self._backoff_max)
        logger.warning(
            "delivering %s %s (attempt %s) failed: %s%s",
            row.event_type,
            row.event_id,
            attempts,
            exc,
            "; parked" if park else "",
        )
        with self._sessions() as session, session.begin():
            session.execute(
                self._outbox.update()
                .where(self._outbox.c.position == row.position)
                .values(
                    attempts=attempts,
                    last_error=f"{type(exc).__name__}: {exc}"[:2000],
                    next_attempt_at=now + delay,
                    parked_at=now if park else None,
                )
            )
        return RelayReport(parked=1) if park else RelayReport(failed=1)

    def _envelope(self, row: sa.Row[Any]) -> Envelope:
        return Envelope(
            event_id=row.event_id,
            event_type=row.event_type,
            source=self.source,
            aggregate_id=row.aggregate_id,
            occurred_at=row.occurred_at,
            payload=row.payload,
        )

    # -- operating ------------------------------------------------------------

    def parked(self) -> list[StoredEvent]:
        o = self._outbox
        with self._sessions() as session:
            rows = session.execute(
                sa.select(o).where(o.c.parked_at.is_not(None)).order_by(o.c.position)
            ).all()
        return [self._stored(row) for row in rows]

    def pending_count(self) -> int:
        o = self._outbox
        with self._sessions() as session:
            return session.execute(
                sa.select(sa.func.count())
                .select_from(o)
                .where(o.c.delivered_at.is_(None), o.c.parked_at.is_(None))
            ).scalar_one()

    def replay(self, event_id: str) -> bool:
        """Put a parked event back in line; True if there was one to replay."""
        o = self._outbox
        with self._sessions() as session, session.begin():
            result = session.execute(
                o.update()
                .where(o.c.event_id == event_id, o.c.parked_at.is_not(None))
                .values(parked_at=None, attempts=0, next_attempt_at=None)
            )
            return cast(sa.CursorResult[Any], result).rowcount == 1

    def _stored(self, row: sa.Row[Any]) -> StoredEvent:
        return StoredEvent(
            position=row.position,
            envelope=self._envelope(row),
            attempts=row.attempts,
            delivered_at=row.delivered_at,
            parked_at=row.parked_at,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
        )


class PromptDelivery:
    """An ``after_commit`` for a unit of work that writes to ``relay``'s outbox:
    its events are delivered right after the commit, by a thread of this
    process, instead of waiting for the relay process to poll.

    The request that committed them does not wait for the delivery (in the
    monolith that was half of a billing write's time: the consumer's
    transaction and the outbox's, each a pool checkout and a commit). Under
    load the thread takes whatever has queued meanwhile as one batch: one
    read and one "delivered" mark for many events.

    The events are already safe in the outbox when they are handed over;
    whatever is not delivered here (the process dies first, an older event of
    the same aggregate is still waiting, a consumer fails) is left to
    :meth:`OutboxRelay.relay_pending`.
    """

    def __init__(
        self,
        relay: OutboxRelay,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._relay = relay
        self._batch_size = batch_size
        self._max_queued = max_queued
        # (event id, the id of the request that committed it)
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._owner_pid: int | None = None
        #: Events not queued because ``max_queued`` were waiting already.
        self.left_to_the_relay = 0

    def __call__(self, envelopes: Sequence[Envelope]) -> None:
        with self._lock:
            self._start_here()
            if self._busy + len(envelopes) > self._max_queued:
                # A consumer slower than the writers: the queue would only grow.
                # These wait in the outbox for the relay, like any undelivered event.
                self.left_to_the_relay += len(envelopes)
                return
            self._busy += len(envelopes)
        request_id = current_request_id()
        for envelope in envelopes:
            self._queue.put((envelope.event_id, request_id))

    def wait_until_idle(self, timeout: float) -> bool:
        """Wait until every event handed over so far was attempted (tests and
        a graceful stop use it); False if ``timeout`` seconds passed first."""
        with self._idle:
            if self._owner_pid != os.getpid():
                return True  # nothing was handed over in this process
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def _start_here(self) -> None:
        # A forked worker (gunicorn) inherits the object but not the thread.
        if self._owner_pid == os.getpid():
            return
        self._owner_pid = os.getpid()
        self._busy = 0
        self._queue = queue.SimpleQueue()
        name = f"deliver-{self._relay.source}"
        threading.Thread(target=self._deliver_forever, name=name, daemon=True).start()

    def _deliver_forever(self) -> None:
        work = self._queue
        while True:
            batch = [work.get()]
            while len(batch) < self._batch_size:
                try:
                    batch.append(work.get_nowait())
                except queue.Empty:
                    break
            try:
                self._relay.relay_events(
                    [event_id for event_id, _ in batch], request_ids=dict(batch)
                )
            except Exception:
                logger.exception("prompt delivery failed; the relay will retry")
            finally:
                with self._idle:
                    self._busy -= len(batch)
                    self._idle.notify_all()
