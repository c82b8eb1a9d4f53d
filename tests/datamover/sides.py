"""Both billing apps on a mover's pair of databases, and clients that behave
like the proxy will: send a user's request to the side that owns the user,
follow a 409 ``not_owner`` to the other side, wait out a 503 ``ownership_moving``."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from datamover.runner import MoveRunner
from extracted.billing_service import create_app as create_billing_service
from extracted.billing_service.app import system_of as service_system
from extracted.billing_service.users import User
from monolith import create_app as create_monolith
from monolith.app import system_of as monolith_system
from servicekit.ownership import ACTING_USER_HEADER, bucket
from tests.datamover.support import Pair
from tests.extracted.deployment import TEST_KEYS
from tests.support.ids import unique, unique_email
from tests.support.processes import free_port, poll

SIDES = ("monolith", "service")


class EveryoneIsActive:
    """The service's users directory: the users these tests register on the monolith."""

    def find_user(self, user_id: str) -> User | None:
        return User(id=user_id, email=f"{user_id}@example.com", name="Ada", active=True)


@dataclasses.dataclass
class Apps:
    monolith: Flask
    service: Flask

    def client(self, side: str) -> FlaskClient:
        return (self.monolith if side == "monolith" else self.service).test_client()


@contextmanager
def both_apps(pair: Pair) -> Iterator[Apps]:
    monolith = create_monolith({"DATABASE_URL": pair.source, "TESTING": True})
    service = create_billing_service(
        {
            "DATABASE_URL": pair.target,
            "TESTING": True,
            "INTERNAL_KEYS": TEST_KEYS,
            "EVENTS_URL": f"http://127.0.0.1:{free_port()}",  # nobody listens
        },
        users=EveryoneIsActive(),
    )
    yield Apps(monolith, service)
    monolith_system(monolith).engine.dispose()
    service_system(service).engine.dispose()


def user_in(apps: Apps, lo: int, hi: int) -> str:
    """A user registered on the monolith whose billing bucket is in ``lo <= bucket < hi``."""
    client = apps.client("monolith")
    while True:
        response = client.post("/users", json={"email": unique_email(), "name": "Ada"})
        assert response.status_code == 201, response.get_json()
        user = response.get_json()["id"]
        if lo <= bucket("billing", user) < hi:
            return user  # type: ignore[no-any-return]


def as_user(user: str) -> dict[str, str]:
    return {ACTING_USER_HEADER: user}


def a_plan(apps: Apps, side: str = "monolith") -> dict[str, Any]:
    response = apps.client(side).post(
        "/billing/plans",
        json={
            "code": unique("plan"),
            "name": "Pro",
            "price_minor": 1_000,
            "currency": "EUR",
            "interval": "month",
        },
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def subscribed(apps: Apps, side: str, user: str, plan: dict[str, Any]) -> str:
    """``user`` subscribed to ``plan`` on ``side``; the subscription's id."""
    response = apps.client(side).post(
        "/billing/subscriptions",
        json={"user_id": user, "plan_id": plan["id"]},
        headers=as_user(user),
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]  # type: ignore[no-any-return]


def hand_over(runner: MoveRunner, service_buckets: int, plans: str) -> dict[str, Any]:
    """Ask for an ownership and wait until both databases have it, and the
    mover has recorded the handover that got them there (it does so just
    after the second database's commit, which a status may see first)."""
    runner.set_ownership(service_buckets, plans)
    return poll(  # type: ignore[no-any-return]
        lambda: (
            (o := runner.status()["ownership"])["converged"]
            and o["service_buckets"] == service_buckets
            and (o["last_handover"] is None or o["last_handover"]["epoch"] == o["epoch"])
            and o
        ),
        timeout=60,
        interval=0.02,
        message=f"ownership never reached {service_buckets} buckets, plans {plans}",
    )


@dataclasses.dataclass
class Customer:
    user: str
    subscription: str
    side: str = "monolith"


class Traffic:
    """Users invoicing themselves as fast as they can, each through a client that
    behaves like the proxy; records what was accepted where, and who was held."""

    def __init__(self, apps: Apps, customers: list[Customer]) -> None:
        self.apps = apps
        self.customers = customers
        self.accepted: dict[str, str] = {}  # invoice id -> the side that accepted it
        self.held: dict[str, float] = {}  # user -> longest wait on a moving slot
        self.refused: dict[str, int] = {}  # user -> 409 not_owner answers
        self.unexpected: list[Any] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(customer,), daemon=True)
            for customer in customers
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, customer: Customer) -> None:
        clients = {side: self.apps.client(side) for side in SIDES}
        while not self._stop.is_set():
            held_since: float | None = None
            while not self._stop.is_set():
                response = clients[customer.side].post(
                    "/billing/invoices",
                    json={"subscription_id": customer.subscription},
                    headers=as_user(customer.user),
                )
                body = response.get_json()
                if response.status_code == 201:
                    self.accepted[body["id"]] = customer.side
                    break
                if response.status_code == 409 and body["code"] == "not_owner":
                    self.refused[customer.user] = self.refused.get(customer.user, 0) + 1
                    customer.side = body["fields"]["owner"]
                elif response.status_code == 503 and body["code"] == "ownership_moving":
                    assert response.headers["Retry-After"] == "1"
                    held_since = held_since or time.monotonic()
                    time.sleep(0.005)  # a proxy would wait Retry-After; tests are impatient
                else:
                    self.unexpected.append((response.status_code, body))
                    return
            if held_since is not None:
                waited = time.monotonic() - held_since
                self.held[customer.user] = max(self.held.get(customer.user, 0.0), waited)
            time.sleep(0.002)

    def wait_for(self, accepted: int, timeout: float = 30.0) -> None:
        start = len(self.accepted)
        poll(
            lambda: len(self.accepted) >= start + accepted or self.unexpected,
            timeout=timeout,
            message="the traffic made no progress",
        )
        assert not self.unexpected, self.unexpected[:3]

    def wait_until_on(self, people: list[Customer], side: str, timeout: float = 30.0) -> None:
        """Until each of ``people`` has written to ``side``: a number of writes
        in all may all be other users', and a user meets its new owner only
        when it writes once more."""
        poll(
            lambda: all(c.side == side for c in people) or self.unexpected,
            timeout=timeout,
            message=f"a user never wrote to its new owner, the {side}",
        )
        assert not self.unexpected, self.unexpected[:3]
