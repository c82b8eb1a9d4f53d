"""The one place that wires the monolith together.

Engines, unit-of-work factories, facades, the event bus and its
subscriptions are built here, from configuration, when the app starts — never
at import time. Reading this file tells who talks to whom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from monolith.billing import orm as billing_orm
from monolith.billing.api import BillingFacade
from monolith.billing.events import InvoiceIssued, InvoicePaid, SubscriptionCancelled
from monolith.billing.repository import BillingUnitOfWork
from monolith.billing_port import BillingPort, HttpBilling, InProcessBilling, RetiringBilling
from monolith.notifications import orm as notifications_orm
from monolith.notifications.handlers import NotificationHandlers
from monolith.notifications.repository import NotificationsUnitOfWork
from monolith.notifications.services import LogSender, Sender
from monolith.users import orm as users_orm
from monolith.users.api import UsersFacade
from monolith.users.events import UserRegistered
from monolith.users.repository import UsersUnitOfWork
from servicekit.db import create_engine, is_sqlite, reader
from servicekit.httpclient import HttpClient
from servicekit.idempotency import IdempotencyKeys
from servicekit.inbox import EventBus
from servicekit.outbox import DEFAULT_MAX_ATTEMPTS, OutboxRelay, PromptDelivery
from servicekit.ownership import MONOLITH, OwnershipGuard
from servicekit.uow import AfterCommit

#: Paths of billing's records that belong to no user: the plans' owner (slot 100).
BILLING_TABLE_PATHS = ("/billing/plans",)

#: Every module's tables, in one database: what migrations and the boundary
#: checks look at.
MODULE_METADATA: dict[str, sa.MetaData] = {
    "users": users_orm.metadata,
    "billing": billing_orm.metadata,
    "notifications": notifications_orm.metadata,
}


class Relays(Mapping[str, OutboxRelay]):
    """Each module's outbox relay — without billing's once its tables are
    archived (the decommission): ``events relay`` keeps running on the rest."""

    def __init__(self, relays: dict[str, OutboxRelay], archived: dict[str, Callable[[], bool]]):
        self._relays = relays
        self._archived = archived

    def _gone(self, name: str) -> bool:
        archived = self._archived.get(name)
        return archived is not None and archived()

    def __getitem__(self, name: str) -> OutboxRelay:
        if self._gone(name):
            raise KeyError(name)
        return self._relays[name]

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in self._relays if not self._gone(name)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclasses.dataclass
class Monolith:
    engine: Engine
    sessions: sessionmaker[Session]
    bus: EventBus
    relays: Mapping[str, OutboxRelay]
    users: UsersFacade
    users_uow: Callable[[], UsersUnitOfWork]
    billing_uow: Callable[[], BillingUnitOfWork]
    billing_read_uow: Callable[[], BillingUnitOfWork]
    notifications_uow: Callable[[], NotificationsUnitOfWork]
    billing_idempotency: IdempotencyKeys
    billing_ownership: OwnershipGuard
    billing: BillingPort
    prompt_deliveries: Sequence[PromptDelivery] = ()

    def wait_for_deliveries(self, timeout: float) -> bool:
        """Wait until the events committed so far were handed to their consumers
        (the request that committed them did not wait); False on ``timeout``."""
        return all(delivery.wait_until_idle(timeout) for delivery in self.prompt_deliveries)

    def check_database(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def relay_pending(self) -> int:
        """Deliver every due event of every outbox once; return how many were delivered."""
        return sum(relay.relay_pending().delivered for relay in self.relays.values())


def bootstrap(
    database_url: str,
    *,
    sender: Sender | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    deliver_eagerly: bool = True,
    billing_service: HttpClient | None = None,
    billing_service_later: HttpClient | None = None,
) -> Monolith:
    """``billing_service``: a client of the billing service when billing runs there
    (the HTTP adapter of the billing port); None when it runs in this process.
    ``billing_service_later``: with billing in this process, where its events
    go once it is decommissioned here (None: billing stays in this process)."""
    engine = create_engine(database_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    read_sessions = sessionmaker(reader(engine), expire_on_commit=False)
    bus = EventBus()
    relays = {
        "users": OutboxRelay(
            sessions,
            users_orm.outbox,
            source="users",
            deliver=bus.deliver,
            max_attempts=max_attempts,
        ),
        "billing": OutboxRelay(
            sessions,
            billing_orm.outbox,
            source="billing",
            deliver=bus.deliver,
            max_attempts=max_attempts,
        ),
    }

    prompt = {name: PromptDelivery(relay) for name, relay in relays.items() if deliver_eagerly}
    after_commit: dict[str, AfterCommit | None] = {name: prompt.get(name) for name in relays}

    def users_uow() -> UsersUnitOfWork:
        return UsersUnitOfWork(
            sessions, outbox=users_orm.outbox, source="users", after_commit=after_commit["users"]
        )

    billing_ownership = OwnershipGuard(
        engine,
        billing_orm.ownership,
        side=MONOLITH,
        group="billing",
        table_paths=BILLING_TABLE_PATHS,
    )

    def billing_uow() -> BillingUnitOfWork:
        return BillingUnitOfWork(
            sessions,
            outbox=billing_orm.outbox,
            source="billing",
            after_commit=after_commit["billing"],
            on_begin=billing_ownership.check_in_transaction,
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

    def notifications_uow() -> NotificationsUnitOfWork:
        return NotificationsUnitOfWork(sessions)

    # Facades only read, and are called from inside other modules' transactions.
    users = UsersFacade(lambda: UsersUnitOfWork(read_sessions))

    # Who reacts to what. The consuming module owns each handler; billing is
    # reached through its port, in this process or in the billing service.
    billing: BillingPort
    if billing_service is not None:
        billing = HttpBilling(billing_service)
    elif billing_service_later is not None:
        billing = RetiringBilling(
            BillingFacade(billing_uow), billing_service_later, retired=billing_ownership.retired
        )
    else:
        billing = InProcessBilling(BillingFacade(billing_uow))
    billing.connect(bus)
    notify = NotificationHandlers(users, sender or LogSender())
    for event_type, handler in (
        (UserRegistered, notify.on_user_registered),
        (InvoiceIssued, notify.on_invoice_issued),
        (InvoicePaid, notify.on_invoice_paid),
        (SubscriptionCancelled, notify.on_subscription_cancelled),
    ):
        bus.subscribe(
            event_type,
            handler,
            uow_factory=notifications_uow,
            inbox=notifications_orm.processed_events,
        )

    return Monolith(
        engine=engine,
        sessions=sessions,
        bus=bus,
        relays=Relays(relays, {"billing": billing_ownership.archived}),
        users=users,
        users_uow=users_uow,
        billing_uow=billing_uow,
        billing_read_uow=billing_read_uow,
        notifications_uow=notifications_uow,
        billing_idempotency=IdempotencyKeys(
            sessions,
            billing_orm.idempotency_keys,
            on_begin=billing_ownership.check_in_transaction,
        ),
        billing_ownership=billing_ownership,
        billing=billing,
        prompt_deliveries=list(prompt.values()),
    )
