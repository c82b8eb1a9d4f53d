"""The unit of work: one business transaction, rolled back unless committed.

Services take a unit of work, never a session. Modules subclass
:class:`UnitOfWork` to expose their repositories; events published through
:meth:`UnitOfWork.publish` land in the module's outbox in the same
transaction, and are handed to ``after_commit`` once the commit succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from servicekit.events import Envelope, IntegrationEvent
from servicekit.outbox import write_to_outbox

__all__ = ["AfterCommit", "OnBegin", "UnitOfWork"]

logger = logging.getLogger(__name__)

AfterCommit = Callable[[Sequence[Envelope]], None]
#: Runs first in every transaction of the unit of work (the ownership check).
OnBegin = Callable[[Session], None]


class UnitOfWork:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        outbox: sa.Table | None = None,
        source: str = "",
        after_commit: AfterCommit | None = None,
        on_begin: OnBegin | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._outbox = outbox
        self._source = source
        self._after_commit = after_commit
        self._on_begin = on_begin
        self.published: list[Envelope] = []
        self._depth = 0
        self._commit_held = False
        self.commit_requested = False

    def __enter__(self) -> Self:
        # Re-entrant: a caller that already opened the unit of work (the
        # idempotency runner, the event bus) shares it with the service it calls.
        self._depth += 1
        if self._depth == 1:
            self.session = self._session_factory()
            self.published = []
            self._committed = False
            if self._on_begin is not None:
                try:
                    self._on_begin(self.session)
                except BaseException:
                    self._depth -= 1
                    self.session.rollback()
                    self.session.close()
                    raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth:
            return
        if not self._committed:
            self.session.rollback()
        self.session.close()

    def publish(self, event: IntegrationEvent) -> None:
        if self._outbox is None:
            raise RuntimeError(f"{type(self).__name__} has no outbox to publish {event!r}")
        envelope = Envelope.wrap(event, source=self._source)
        write_to_outbox(self.session, self._outbox, envelope)
        self.published.append(envelope)

    def hold_commit(self) -> None:
        """Make :meth:`commit` only note the request, until :meth:`release_commit`.

        The caller can then add its own writes to the very same transaction
        after the service has finished (the idempotency runner stores the
        reply this way, so that a reply exists if and only if the change does).
        """
        self._commit_held = True

    def release_commit(self) -> None:
        self._commit_held = False
        self.commit()

    def commit(self) -> None:
        if self._commit_held:
            self.session.flush()
            self.commit_requested = True
            return
        self.session.commit()
        self._committed = True
        if self.published and self._after_commit is not None:
            try:
                self._after_commit(list(self.published))
            except Exception:
                # The change is committed and its events are safe in the outbox;
                # the relay delivers what this eager attempt could not.
                logger.exception("eager delivery after commit failed; the relay will retry")

    def rollback(self) -> None:
        self.session.rollback()
