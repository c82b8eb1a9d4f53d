"""The journey under load, short version: simulated users subscribe, are
invoiced and pay (some payments retried with their key) through the proxy,
and read back their own invoices, while billing's routes move monolith →
shadow → canary 10 → canary 50 → service → monolith → service and the data
mover is SIGKILLed in the middle of a handover. At the end both databases
hold the same rows, no user ever missed a record it had been told about, every
idempotency key paid once, and every business event was announced once.

`make bench-journey` runs it longer (JOURNEY_SECONDS_PER_STEP)."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from demo.loadgen import Crowd
from tests.conftest import BACKENDS
from tests.datamover.test_data_moves_with_the_route import _admin, a_plan, strangler
from tests.extracted.deployment import Deployment, deployed
from tests.support.databases import fresh_database
from tests.support.processes import poll

pytestmark = pytest.mark.e2e

SHOPPERS = 6
#: At most this many cycles per shopper (each invoices and pays once): a bound, not a goal.
MAX_CYCLES = int(os.environ.get("JOURNEY_MAX_CYCLES", "1000"))
#: Seconds of load at each step of the journey (after its handover converged).
SECONDS_PER_STEP = float(os.environ.get("JOURNEY_SECONDS_PER_STEP", "1.5"))
STEPS = (
    ("shadow", None),
    ("canary", 10),
    ("canary", 50),
    ("service", None),
    ("monolith", None),
    ("service", None),
)


#: `make test` runs the journey on PostgreSQL; on SQLite a payment's idempotency
#: key was seen to stay in flight for seconds under the full suite's load (a
#: request waiting out the single write lock), so SQLite's journey runs in
#: `make bench-journey` (JOURNEY_BACKENDS=sqlite,postgres) until that is understood.
JOURNEY_BACKENDS = os.environ.get("JOURNEY_BACKENDS", "postgres").split(",")


@pytest.fixture(params=[b for b in BACKENDS if b in JOURNEY_BACKENDS])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """Everything as real processes, on SQLite files or two PostgreSQL databases."""
    with (
        fresh_database(request.param, tmp_path, "journey_monolith") as monolith,
        fresh_database(request.param, tmp_path, "journey_service") as service,
        deployed(
            tmp_path,
            billing_adapter="inprocess",
            with_service=True,
            databases=(monolith, service),
        ) as deployment,
    ):
        deployment.start_mover(LEASE_SECONDS=1.5, POLL_SECONDS=0.02)
        deployment.start_proxy()
        yield deployment


def ownership(system: Deployment) -> dict[str, Any]:
    """The move's ownership, or nothing while the mover cannot say (restarting)."""
    with _admin(system) as admin:
        reply = admin.get("/data/billing")
    return (reply.json().get("ownership") or {}) if reply.status_code == 200 else {}


def converged_at(system: Deployment, buckets: int) -> bool:
    reported = ownership(system)
    return reported.get("service_buckets") == buckets and bool(reported.get("converged"))


def test_the_journey_under_load_loses_nothing(system: Deployment) -> None:
    with httpx.Client(base_url=system.proxy_url, timeout=10) as proxy:
        plan = a_plan(proxy)
    assert strangler(system, "data", "start", "billing", "--wait").returncode == 0
    assert strangler(system, "data", "verify", "billing").returncode == 0

    crowd = Crowd(system.proxy_url, plan, SHOPPERS, max_cycles=MAX_CYCLES).start()
    holds: list[float] = []
    try:
        for number, (mode, percent) in enumerate(STEPS):
            args = ["set", "billing-invoices", mode, *([str(percent)] if percent else [])]
            # As an operator would: a copy lagging under this load clears by itself.
            moved = strangler(system, *args, "-r", f"journey step {number}", "--wait", "30")
            assert moved.returncode == 0, moved.stdout + moved.stderr
            if number == 2:  # the mover dies in the middle of a handover, and comes back
                system.processes["mover"].kill()
                system.start_mover(LEASE_SECONDS=1.5, POLL_SECONDS=0.02)
            buckets = {"canary": percent or 0, "service": 100}.get(mode, 0)
            poll(lambda b=buckets: converged_at(system, b), timeout=60, message=f"step {number}")
            handover = ownership(system).get("last_handover") or {}
            if handover.get("hold_seconds") is not None:
                holds.append(float(handover["hold_seconds"]))
            done = crowd.cycles
            deadline = time.monotonic() + SECONDS_PER_STEP
            poll(
                lambda d=done, t=deadline: (
                    time.monotonic() > t and (crowd.cycles > d or crowd.all_done())
                ),
                timeout=60,
                message=f"no traffic flowed at step {number}",
            )
            assert not crowd.errors, crowd.errors
    finally:
        crowd.stop()

    verified = strangler(system, "data", "verify", "billing")
    shoppers = crowd.shoppers
    cycles, violations, errors, keys = crowd.cycles, crowd.violations, crowd.errors, crowd.keys
    with sa.create_engine(system.service_db).connect() as connection:
        payments = connection.execute(
            sa.text(
                "SELECT invoice_id, count(*), sum(amount_minor) FROM billing_payments GROUP BY 1"
            )
        ).all()
        over = connection.execute(
            sa.text("SELECT count(*) FROM billing_invoices WHERE amount_paid_minor > amount_minor")
        ).scalar()
    paid_twice = [row for row in payments if row[1] != 1]
    told = {i for s in shoppers for i in s.invoices if s.invoices[i]}
    issued = sum(len(s.invoices) for s in shoppers)
    print(
        f"\njourney: {cycles} cycles by {SHOPPERS} users, {len(keys)} payment keys, "
        f"{crowd.held} fenced answers (503), fence holds "
        f"{', '.join(f'{h:.2f}s' for h in holds)}; violations {len(violations)}, "
        f"payments not exactly once {len(paid_twice)}, over-paid {over}"
    )
    assert not errors, errors
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert violations == []
    assert paid_twice == [] and over == 0
    assert len(payments) >= len(told) and cycles > len(STEPS)
    # One notification per business event, whichever side made it.
    expected = {"welcome": SHOPPERS, "invoice_issued": issued, "receipt": len(told)}
    poll(
        lambda: notifications(system, [s.user_id for s in shoppers]) == expected,
        timeout=30,
        message=f"notifications {notifications(system, [s.user_id for s in shoppers])} "
        f"!= {expected}",
    )


def notifications(system: Deployment, users: list[str]) -> collections.Counter[str]:
    """What the monolith announced to ``users``, by kind (read from its table)."""
    marks = ", ".join(f"'{user}'" for user in users)
    with sa.create_engine(system.monolith_db).connect() as connection:
        rows = connection.execute(
            sa.text(f"SELECT kind FROM notifications_messages WHERE user_id IN ({marks})")
        ).all()
    return collections.Counter(row[0] for row in rows)
