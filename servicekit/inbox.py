"""The consuming side of integration events: subscriptions and the inbox.

A module that reacts to another module's events owns the handler and an
inbox table (``<owner>_processed_events``). The :class:`EventBus` runs each
handler in the consumer's own unit of work and records the event id in the
consumer's inbox *in the same transaction*, so an event delivered twice — a
relay retry, a replay, two relays racing — is applied once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from servicekit.db import UTCDateTime, utcnow
from servicekit.events import Envelope, EventRegistry, IntegrationEvent
from servicekit.uow import UnitOfWork

__all__ = ["EventBus", "HandlerFailed", "inbox_table"]

logger = logging.getLogger(__name__)


def inbox_table(metadata: sa.MetaData, owner: str) -> sa.Table:
    """The inbox of module ``owner``: which handler applied which event."""
    return sa.Table(
        f"{owner}_processed_events",
        metadata,
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("handler", sa.String(200), primary_key=True),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
    )


class Handler(Protocol):
    def __call__(self, event: Any, uow: Any, /) -> None: ...


@dataclasses.dataclass(frozen=True)
class Subscription:
    name: str
    handler: Handler
    uow_factory: Callable[[], UnitOfWork]
    inbox: sa.Table


class HandlerFailed(Exception):
    """One or more subscribers failed; the event must be delivered again."""


class EventBus:
    """Delivers envelopes to the handlers subscribed to their type."""

    def __init__(self, registry: EventRegistry | None = None) -> None:
        self.registry = registry or EventRegistry()
        self._subscriptions: dict[str, list[Subscription]] = defaultdict(list)
        self._forwards: dict[str, list[tuple[str, Callable[[Envelope], None]]]] = defaultdict(list)

    def subscribe(
        self,
        event_type: type[IntegrationEvent],
        handler: Handler,
        *,
        uow_factory: Callable[[], UnitOfWork],
        inbox: sa.Table,
    ) -> None:
        self.registry.register(event_type)
        name = f"{handler.__module__}.{getattr(handler, '__qualname__', handler)}"
        self._subscriptions[event_type.type_name()].append(
            Subscription(name=name, handler=handler, uow_factory=uow_factory, inbox=inbox)
        )

    def forward(
        self, event_type: type[IntegrationEvent], deliver: Callable[[Envelope], None], *, name: str
    ) -> None:
        """Hand envelopes of ``event_type``, as they are, to ``deliver``.

        For a consumer in another deployable (``deliver`` posts to its inbox,
        which applies each event once): no local transaction and no local
        inbox record. A failure makes :meth:`deliver` raise like a failed
        handler, so the relay tries again. ``name`` is dotted like a handler's.
        """
        self.registry.register(event_type)
        self._forwards[event_type.type_name()].append((name, deliver))

    def subscriptions(self) -> dict[str, list[str]]:
        """Event type -> handler (and forward) names, for the boundary report."""
        names: dict[str, list[str]] = defaultdict(list)
        for event, subs in self._subscriptions.items():
            names[event].extend(s.name for s in subs)
        for event, forwards in self._forwards.items():
            names[event].extend(name for name, _ in forwards)
        return {event: found for event, found in names.items() if found}

    def deliver(self, envelope: Envelope) -> None:
        """Apply ``envelope`` to every subscriber once; raise if any failed.

        Each subscriber has its own transaction: one failing handler neither
        undoes nor blocks the others, and the retry skips those that applied it.
        """
        subscriptions = self._subscriptions.get(envelope.event_type, [])
        forwards = self._forwards.get(envelope.event_type, [])
        if not subscriptions and not forwards:
            return
        failures = []
        if subscriptions:
            event = self.registry.decode(envelope)
        for subscription in subscriptions:
            try:
                self._apply_once(subscription, event)
            except Exception as exc:
                logger.exception("handler %s failed on %s", subscription.name, envelope.event_id)
                failures.append(f"{subscription.name}: {exc!r}")
        for name, forward in forwards:
            try:
                forward(envelope)
            except Exception as exc:
                logger.warning("forwarding %s to %s failed: %s", envelope.event_id, name, exc)
                failures.append(f"{name}: {exc!r}")
        if failures:
            raise HandlerFailed("; ".join(failures))

    @staticmethod
    def _apply_once(subscription: Subscription, event: IntegrationEvent) -> None:
        inbox = subscription.inbox
        with subscription.uow_factory() as uow:
            seen = uow.session.execute(
                sa.select(inbox.c.event_id).where(
                    inbox.c.event_id == event.event_id, inbox.c.handler == subscription.name
                )
            ).first()
            if seen:
                return
            subscription.handler(event, uow)
            uow.session.execute(
                inbox.insert().values(
                    event_id=event.event_id, handler=subscription.name, processed_at=utcnow()
                )
            )
            try:
                uow.commit()
            except IntegrityError:
                # Another delivery of the same event committed first: it is applied.
                logger.info("%s already applied %s", subscription.name, event.event_id)
