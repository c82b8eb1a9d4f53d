"""Two billing databases and what the mover tests do to them: seed the
monolith's, write to it while the mover works, read both back plainly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from monolith.billing import orm
from monolith.billing.seed import seed_billing
from servicekit.db import create_engine, utcnow
from servicekit.ids import new_id
from tests.support.processes import poll

#: Small chunks, so that a few thousand rows make many checkpoints.
FAST = {
    "CHUNK_ROWS": 300,
    "APPLY_BATCH": 200,
    "POLL_SECONDS": 0.02,
    "NICE": 0.0,
    "LEASE_SECONDS": 1.5,
    "VERIFY_RANGE_ROWS": 700,
    "SCHEMA_CHECK_SECONDS": 0.2,
    "INTERNAL_KEYS": "test:mover-test-secret",
}
BILLING_TABLES = (
    "billing_plans",
    "billing_subscriptions",
    "billing_invoices",
    "billing_payments",
    "billing_idempotency_keys",
)


@dataclasses.dataclass(frozen=True)
class Pair:
    backend: str
    source: str
    target: str


def seed(url: str, *, users: int = 60, invoices: int = 1_500) -> None:
    """The monolith's seed data (its own seeder), plus a few idempotency records."""
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        seed_billing(session, [new_id() for _ in range(users)], invoices)
        for n in range(20):
            session.execute(
                orm.idempotency_keys.insert().values(
                    scope="billing.payments",
                    key=f"seed-{n}",
                    fingerprint="f" * 64,
                    state="completed",
                    reserved_at=utcnow(),
                    response_status=201,
                    response_body={"id": new_id(), "amount_minor": n},
                )
            )
    engine.dispose()


def rows_of(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table``, in key order, read without the mover's code."""
    engine = create_engine(url)
    metadata = sa.MetaData()
    reflected = sa.Table(table, metadata, autoload_with=engine)
    key = list(reflected.primary_key.columns)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(sa.select(reflected).order_by(*key))]
    engine.dispose()
    return rows


def same_rows(pair: Pair) -> dict[str, int]:
    """Assert both databases hold the same billing rows; rows per table."""
    counts = {}
    for table in BILLING_TABLES:
        left, right = rows_of(pair.source, table), rows_of(pair.target, table)
        assert left == right, f"{table}: {len(left)} rows in the monolith, {len(right)} in service"
        counts[table] = len(left)
    return counts


class Writer:
    """Changes the monolith's billing tables from a thread, as traffic and an
    operator would: inserts, updates and deletes, bounded in count and time."""

    def __init__(self, url: str, *, limit: int = 3_000, seconds: float = 30.0) -> None:
        self.engine = create_engine(url)
        self.limit = limit
        self.seconds = seconds
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._random = random.Random(7)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.engine.dispose()

    def _ids(self, table: sa.Table) -> list[str]:
        with self.engine.connect() as connection:
            return [row[0] for row in connection.execute(sa.select(table.c.id))]

    def _run(self) -> None:
        subscriptions = self._ids(orm.subscriptions)
        invoices = self._ids(orm.invoices)
        payments = self._ids(orm.payments)
        plans = self._ids(orm.plans)
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and self.done < self.limit and time.monotonic() < deadline:
            try:
                with self.engine.begin() as connection:
                    self._one(connection, subscriptions, invoices, payments, plans)
                self.done += 1
            except sa.exc.DBAPIError as error:  # a lost race with itself is not the mover's bug
                self.failures.append(str(error)[:200])
            time.sleep(0.001)

    def _one(
        self,
        connection: sa.Connection,
        subscriptions: list[str],
        invoices: list[str],
        payments: list[str],
        plans: list[str],
    ) -> None:
        pick = self._random.random()
        if pick < 0.35:
            invoice_id = new_id()
            connection.execute(
                orm.invoices.insert().values(
                    id=invoice_id,
                    subscription_id=self._random.choice(subscriptions),
                    user_id=new_id(),
                    amount_minor=900,
                    currency="EUR",
                    period_start=dt.date(2100, 1, 1) + dt.timedelta(days=self.done),
                    period_end=dt.date(2100, 1, 2) + dt.timedelta(days=self.done),
                    status="open",
                    amount_paid_minor=0,
                    created_at=utcnow(),
                    issued_at=utcnow(),
                )
            )
            invoices.append(invoice_id)
        elif pick < 0.75:
            connection.execute(
                orm.invoices.update()
                .where(orm.invoices.c.id == self._random.choice(invoices))
                .values(amount_paid_minor=0, status="open", paid_at=None)
            )
        elif pick < 0.85 and payments:
            connection.execute(orm.payments.delete().where(orm.payments.c.id == payments.pop()))
        elif pick < 0.95:
            connection.execute(
                orm.plans.update()
                .where(orm.plans.c.id == self._random.choice(plans))
                .values(name=f"Plan {self.done}")
            )
        else:
            connection.execute(
                orm.idempotency_keys.insert().values(
                    scope="billing.payments",
                    key=new_id(),
                    fingerprint="0" * 64,
                    state="in_progress",
                    reserved_at=utcnow(),
                )
            )


def wait_for_phase(status: Any, phase: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll ``status()`` until the move is in ``phase``."""
    return poll(
        lambda: (s := status())["phase"] == phase and s,
        timeout=timeout,
        interval=0.05,
        message=f"the move never reached {phase}",
    )


def fresh_verdict(runner: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Ask ``runner`` for a verification and return its verdict."""
    requested = runner.request_verification()

    def verdict() -> dict[str, Any] | None:
        status = runner.status()
        found = status["verdict"]
        fresh = found and dt.datetime.fromisoformat(found["at"]).timestamp() >= requested
        return found if fresh and not status["verifying"] else None  # type: ignore[no-any-return]

    return poll(verdict, timeout=timeout, interval=0.05, message="no verdict")  # type: ignore[no-any-return]


def caught_up(status: dict[str, Any]) -> bool:
    """Every change captured so far is in the target, and the loop is keeping up."""
    lag = status["lag_seconds"]
    return status["pending_changes"] == 0 and lag is not None and lag < 1.0
