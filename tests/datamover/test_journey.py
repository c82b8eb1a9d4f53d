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
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import BACKENDS
from tests.datamover.test_data_moves_with_the_route import _admin, a_plan, strangler
from tests.extracted.deployment import Deployment, answered, created, deployed
from tests.support.databases import fresh_database
from tests.support.ids import unique, unique_email
from tests.support.processes import poll

pytestmark = pytest.mark.e2e

SHOPPERS = 6
#: At most this many cycles per shopper (each invoices and pays once): a bound, not a goal.
MAX_CYCLES = int(os.environ.get("JOURNEY_MAX_CYCLES", "1000"))
#: The newest invoices a shopper checks on each read (its list is newest first).
CHECKED = 50
#: A breath between a shopper's cycles: bounded load on two shared cores.
PAUSE_SECONDS = 0.05
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
#: Answers that mean "nothing was done, ask again": the fence, a restarting peer.
TRY_AGAIN = {502, 503, 504}
#: A keyed payment whose first attempt timed out on the client is still being
#: processed: a real client waits and asks again with the same key.
IN_FLIGHT = b"idempotency_key_in_flight"


class Shopper(threading.Thread):
    """One simulated user: every record it was told about must stay readable."""

    def __init__(self, proxy_url: str, plan: dict[str, Any], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=proxy_url, timeout=10)
        self.plan = plan
        self.stop_event = stop
        self.user_id = ""
        self.invoices: dict[str, int] = {}  # invoice id -> amount paid as told
        self.keys: set[str] = set()
        self.cycles = 0
        self.held = 0
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.random = random.Random()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send until the answer is not "try again" (503 from the fence and the like)."""
        for _ in range(200):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            in_flight = response.status_code == 409 and IN_FLIGHT in response.content
            if response.status_code not in TRY_AGAIN and not in_flight:
                return response
            self.held += response.status_code == 503
            time.sleep(float(response.headers.get("Retry-After", "0.1")) / 4)
        raise AssertionError(f"{method} {path} kept answering {response.status_code}")

    def run(self) -> None:
        try:
            user = created(self.call("POST", "/users", json={"email": unique_email(), "name": "S"}))
            self.user_id = user["id"]
            acting = {"X-User-ID": self.user_id}
            subscription = created(
                self.call(
                    "POST",
                    "/billing/subscriptions",
                    json={"user_id": self.user_id, "plan_id": self.plan["id"]},
                    headers=acting,
                )
            )
            while not self.stop_event.is_set() and self.cycles < MAX_CYCLES:
                self.cycle(subscription, acting)
                self.cycles += 1
                self.stop_event.wait(PAUSE_SECONDS)
        except Exception as exc:  # reported by the test, with the shopper's user
            self.errors.append(f"{self.user_id}: {type(exc).__name__}: {exc}")

    def cycle(self, subscription: dict[str, Any], acting: dict[str, str]) -> None:
        invoice = created(
            self.call(
                "POST",
                "/billing/invoices",
                json={"subscription_id": subscription["id"]},
                headers=acting,
            )
        )
        self.invoices[invoice["id"]] = 0
        key = unique("key")
        body = {"amount_minor": invoice["amount_minor"], "currency": invoice["currency"]}
        paid = self.call(
            "POST",
            f"/billing/invoices/{invoice['id']}/payments",
            json=body,
            headers={**acting, "Idempotency-Key": key},
        )
        assert paid.status_code == 201, paid.text
        self.keys.add(key)
        self.invoices[invoice["id"]] = invoice["amount_minor"]
        if self.random.random() < 0.4:  # the client retries: it must replay, not pay twice
            again = self.call(
                "POST",
                f"/billing/invoices/{invoice['id']}/payments",
                json=body,
                headers={**acting, "Idempotency-Key": key},
            )
            if again.status_code != 201 or again.json() != paid.json():
                self.violations.append(f"retried key {key} answered {again.status_code}")
        listed = self.call(
            "GET", f"/billing/invoices?user_id={self.user_id}&page_size=100", headers=acting
        )
        seen = {row["id"]: row["amount_paid_minor"] for row in answered(listed)}
        for invoice_id, amount in list(self.invoices.items())[-CHECKED:]:
            if invoice_id not in seen:
                self.violations.append(f"invoice {invoice_id} missing from its owner's list")
            elif seen[invoice_id] < amount:
                self.violations.append(f"invoice {invoice_id} shows an older payment state")


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

    stop = threading.Event()
    shoppers = [Shopper(system.proxy_url, plan, stop) for _ in range(SHOPPERS)]
    for shopper in shoppers:
        shopper.start()
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
            done = sum(s.cycles for s in shoppers)
            deadline = time.monotonic() + SECONDS_PER_STEP
            poll(
                lambda d=done, t=deadline: (
                    time.monotonic() > t
                    and (sum(s.cycles for s in shoppers) > d or all_done(shoppers))
                ),
                timeout=60,
                message=f"no traffic flowed at step {number}",
            )
            assert not [e for s in shoppers for e in s.errors], [
                e for s in shoppers for e in s.errors
            ]
    finally:
        stop.set()
        for shopper in shoppers:
            shopper.join(timeout=30)

    verified = strangler(system, "data", "verify", "billing")
    cycles = sum(s.cycles for s in shoppers)
    violations = [v for s in shoppers for v in s.violations]
    errors = [e for s in shoppers for e in s.errors]
    keys = {k for s in shoppers for k in s.keys}
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
        f"{sum(s.held for s in shoppers)} fenced answers (503), fence holds "
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


def all_done(shoppers: list[Shopper]) -> bool:
    return all(not s.is_alive() for s in shoppers)


def notifications(system: Deployment, users: list[str]) -> collections.Counter[str]:
    """What the monolith announced to ``users``, by kind (read from its table)."""
    marks = ", ".join(f"'{user}'" for user in users)
    with sa.create_engine(system.monolith_db).connect() as connection:
        rows = connection.execute(
            sa.text(f"SELECT kind FROM notifications_messages WHERE user_id IN ({marks})")
        ).all()
    return collections.Counter(row[0] for row in rows)
