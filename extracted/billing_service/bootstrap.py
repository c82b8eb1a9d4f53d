"""The one place that wires the billing service together, from configuration,
when the app starts — never at import time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from extracted.billing_service.billing import handlers, orm
from extracted.billing_service.billing.consumed import UserDeactivated
from extracted.billing_service.billing.repository import BillingUnitOfWork
from servicekit.db import create_engine, is_sqlite, reader
from servicekit.events import Envelope
from servicekit.idempotency import DEFAULT_LOCK_TIMEOUT, IdempotencyKeys
from servicekit.inbox import EventBus
from servicekit.outbox import (
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_ATTEMPTS,
    OutboxRelay,
    PromptDelivery,
)
from servicekit.ownership import SERVICE, OwnershipGuard

#: What the events of this service say they come from (the monolith's module said the same).
SOURCE = "billing"
#: Paths of records that belong to no user: their owner is the plans' (slot 100).
TABLE_PATHS = ("/billing/plans",)


@dataclasses.dataclass
class BillingService:
    engine: Engine
    sessions: sessionmaker[Session]
    bus: EventBus
    relay: OutboxRelay
    billing_uow: Callable[[], BillingUnitOfWork]
    billing_read_uow: Callable[[], BillingUnitOfWork]
    idempotency: IdempotencyKeys
    ownership: OwnershipGuard

    def check_database(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def relay_pending(self) -> int:
        """Deliver every due event of the outbox once; return how many were delivered."""
        return self.relay.relay_pending().delivered


def bootstrap(
    database_url: str,
    *,
    deliver: Callable[[Envelope], None],
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_max: dt.timedelta = DEFAULT_BACKOFF_MAX,
    deliver_eagerly: bool = False,
    idempotency_lock: dt.timedelta = DEFAULT_LOCK_TIMEOUT,
) -> BillingService:
    """``deliver`` takes billing's events to their consumers (the monolith's inbox)."""
    engine = create_engine(database_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    relay = OutboxRelay(
        sessions,
        orm.outbox,
        source=SOURCE,
        deliver=deliver,
        max_attempts=max_attempts,
        backoff_max=backoff_max,
    )

    after_commit = PromptDelivery(relay) if deliver_eagerly else None

    ownership = OwnershipGuard(
        engine, orm.ownership, side=SERVICE, group="billing", table_paths=TABLE_PATHS
    )

    def billing_uow() -> BillingUnitOfWork:
        return BillingUnitOfWork(
            sessions,
            outbox=orm.outbox,
            source=SOURCE,
            after_commit=after_commit,
            on_begin=ownership.check_in_transaction,
        )

    # The API's reads. On SQLite their transactions begin DEFERRED, so that
    # concurrent lists never queue for the write lock. On PostgreSQL they run
    # without one (AUTOCOMMIT): each is a statement or two that need no common
    # snapshot, and BEGIN and ROLLBACK would be two more round trips each.
    api_read_sessions = sessionmaker(
        reader(engine)
        if is_sqlite(engine)
        else engine.execution_options(isolation_level="AUTOCOMMIT"),
        expire_on_commit=False,
    )

    def billing_read_uow() -> BillingUnitOfWork:
        return BillingUnitOfWork(api_read_sessions)

    # What billing consumes arrives at its inbox endpoint and is applied once.
    bus = EventBus()
    bus.subscribe(
        UserDeactivated,
        handlers.on_user_deactivated,
        uow_factory=billing_uow,
        inbox=orm.processed_events,
    )
    return BillingService(
        engine=engine,
        sessions=sessions,
        bus=bus,
        relay=relay,
        billing_uow=billing_uow,
        billing_read_uow=billing_read_uow,
        idempotency=IdempotencyKeys(
            sessions,
            orm.idempotency_keys,
            lock_timeout=idempotency_lock,
            on_begin=ownership.check_in_transaction,
        ),
        ownership=ownership,
    )
