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

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from servicekit.db import UTCDateTime, utcnow
from servicekit.events import Envelope

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_MAX_ATTEMPTS",
    "OutboxRelay",
    "RelayReport",
    "eager_delivery",
    "outbox_table",
    "write_to_outbox",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_BASE = dt.timedelta(milliseconds=500)
DEFAULT_BACKOFF_MAX = dt.timedelta(minutes=5)
DEFAULT_BATCH_SIZE = 200

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
        report = RelayReport()
        blocked: set[str] = set()
        now = self._clock()
        for row in self._pending_rows(batch_size):
            if row.aggregate_id in blocked:
                report.deferred += 1
                continue
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                blocked.add(row.aggregate_id)
                report.deferred += 1
                continue
            outcome = self._deliver_row(row)
            report += outcome
            if not outcome.delivered:
                blocked.add(row.aggregate_id)
        return report

    def relay_events(self, event_ids: Iterable[str]) -> RelayReport:
        """Deliver just these events, right after the transaction that wrote them.

        An event whose aggregate still has an older undelivered event is left
        for :meth:`relay_pending`, which keeps the order.
        """
        report = RelayReport()
        ids = list(event_ids)
        if not ids:
            return report
        o = self._outbox
        with self._sessions() as session:
            rows = session.execute(
                sa.select(o).where(o.c.event_id.in_(ids)).order_by(o.c.position)
            ).all()
            for row in rows:
                older = session.execute(
                    sa.select(sa.func.count())
                    .select_from(o)
                    .where(
                        o.c.aggregate_id == row.aggregate_id,
                        o.c.position < row.position,
                        o.c.delivered_at.is_(None),
                        o.c.parked_at.is_(None),
                    )
                ).scalar_one()
                if older:
                    report.deferred += 1
            due = [row for row in rows if row.delivered_at is None]
        if report.deferred:
            return report
        for row in due:
            outcome = self._deliver_row(row)
            report += outcome
            if not outcome.delivered:
                break
        return report

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

    def _deliver_row(self, row: sa.Row[Any]) -> RelayReport:
        envelope = self._envelope(row)
        try:
            self._deliver(envelope)
        except Exception as exc:  # any failure is recorded and retried, never lost
            return self._record_failure(row, exc)
        with self._sessions() as session, session.begin():
            session.execute(
                self._outbox.update()
                .where(self._outbox.c.position == row.position)
                .values(delivered_at=self._clock(), last_error=None)
            )
        return RelayReport(delivered=1)

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


def eager_delivery(relay: OutboxRelay) -> Callable[[Sequence[Envelope]], None]:
    """An ``after_commit`` for a unit of work that writes to ``relay``'s outbox:
    its events are delivered right after the commit, instead of waiting for
    the relay process to poll.

    The events are already safe in the outbox when this runs; whatever it
    cannot deliver (an older event of the same aggregate still waiting, a
    failing consumer) is left to :meth:`OutboxRelay.relay_pending`.
    """

    def deliver_committed(envelopes: Sequence[Envelope]) -> None:
        relay.relay_events(envelope.event_id for envelope in envelopes)

    return deliver_committed
