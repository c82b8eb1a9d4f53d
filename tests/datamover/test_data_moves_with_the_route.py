"""Issue 7's "done when", as a reader would do it: the monolith, the billing
service, the data mover and the proxy as real processes; records created
through the proxy while the monolith owns billing; `strangler data start`,
`status` and `verify`; then the service answers for those records exactly as
the monolith does, shadow mode finds no mismatch, and nothing was announced
twice."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from demo.loadgen import a_plan
from servicekit.buckets import bucket
from tests.extracted.deployment import (
    Deployment,
    answered,
    created,
    deployed,
    kinds_of,
)
from tests.support.ids import unique, unique_email
from tests.support.processes import BIN, poll

pytestmark = pytest.mark.e2e

BILLING_ROUTES = ("billing-plans", "billing-subscriptions", "billing-invoices")


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Deployment]:
    with deployed(tmp_path, billing_adapter="inprocess", with_service=True) as deployment:
        deployment.start_mover(LEASE_SECONDS=2, POLL_SECONDS=0.02)
        deployment.start_proxy()
        yield deployment


def strangler(system: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """The `strangler` command, as a reader runs it."""
    env = {
        **os.environ,
        "STRANGLER_URL": system.proxy_url,
        "STRANGLER_TOKEN": "billing-test-token",
    }
    return subprocess.run(
        [str(BIN / "strangler"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def a_customer(proxy: httpx.Client) -> dict[str, Any]:
    """A user who subscribed, was invoiced and paid (with an idempotency key)."""
    user = created(proxy.post("/users", json={"email": unique_email(), "name": "Ada"}))
    plan = a_plan(proxy)
    subscription = created(
        proxy.post("/billing/subscriptions", json={"user_id": user["id"], "plan_id": plan["id"]})
    )
    invoice = created(proxy.post("/billing/invoices", json={"subscription_id": subscription["id"]}))
    key = unique("pay")
    payment = proxy.post(
        f"/billing/invoices/{invoice['id']}/payments",
        json={"amount_minor": 2_500, "currency": "EUR"},
        headers={"Idempotency-Key": key},
    )
    assert payment.status_code == 201, payment.text
    return {
        "user": user,
        "plan": plan,
        "subscription": subscription,
        "invoice": invoice,
        "payment": payment.json(),
        "key": key,
    }


def reads_of(customer: dict[str, Any]) -> list[str]:
    user_id, invoice_id = customer["user"]["id"], customer["invoice"]["id"]
    return [
        f"/billing/plans/{customer['plan']['id']}",
        f"/billing/subscriptions/{customer['subscription']['id']}",
        f"/billing/subscriptions?user_id={user_id}",
        f"/billing/invoices/{invoice_id}",
        f"/billing/invoices?user_id={user_id}",
        f"/billing/invoices/{invoice_id}/payments",
    ]


def test_the_service_answers_for_records_made_before_the_copy(system: Deployment) -> None:
    with (
        httpx.Client(base_url=system.proxy_url, timeout=10) as proxy,
        httpx.Client(base_url=system.monolith_url, timeout=10) as monolith,
        httpx.Client(base_url=system.service_url, timeout=10) as service,
    ):
        customers = [a_customer(proxy) for _ in range(3)]
        first = customers[0]
        assert service.get(f"/billing/invoices/{first['invoice']['id']}").status_code == 404

        # The gate: billing's routes cannot leave while the data is not there.
        refused = strangler(system, "set", "billing-invoices", "canary", "10", "-r", "try")
        assert refused.returncode == 1
        assert "strangler data start billing" in refused.stderr + refused.stdout

        started = strangler(system, "data", "start", "billing", "--wait")
        assert started.returncode == 0, started.stderr
        assert "100%" in started.stdout

        later = a_customer(proxy)  # written while capture runs
        customers.append(later)
        poll(
            lambda: service.get(f"/billing/invoices/{later['invoice']['id']}").status_code == 200,
            timeout=5,
            message="a change made after the copy never reached the service",
        )
        status = strangler(system, "data", "status", "billing")
        assert status.returncode == 0 and "streaming" in status.stdout, status.stdout
        verified = strangler(system, "data", "verify", "billing")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "billing: clean" in verified.stdout

        # Every record answers the same from the service as from the monolith.
        for customer in customers:
            for path in reads_of(customer):
                there, here = service.get(path), monolith.get(path)
                assert there.status_code == here.status_code == 200, path
                assert there.json() == here.json(), path

        # A payment retried on the service replays the monolith's answer.
        retry = service.post(
            f"/billing/invoices/{first['invoice']['id']}/payments",
            json={"amount_minor": 2_500, "currency": "EUR"},
            headers={"Idempotency-Key": first["key"]},
        )
        assert retry.status_code == 201
        assert retry.json() == first["payment"]
        assert retry.headers.get("Idempotent-Replayed") == "true"

        # Copied rows announce nothing: only the owner of a record publishes.
        with sa.create_engine(system.service_db).connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM billing_outbox")).scalar() == 0
        for customer in customers:
            assert sorted(kinds_of(monolith, customer["user"]["id"])) == [
                "invoice_issued",
                "receipt",
                "welcome",
            ]

        # Shadow mode on billing's reads now finds nothing to report.
        for route in BILLING_ROUTES:
            moved = strangler(system, "set", route, "shadow", "-r", "data in sync")
            assert moved.returncode == 0, moved.stderr
        poll(lambda: _all_in(system, "shadow"), timeout=5)
        for _ in range(3):
            for customer in customers:
                for path in reads_of(customer):
                    answered(proxy.get(path, headers={"X-User-ID": customer["user"]["id"]}))
        poll(lambda: _shadows_compared(system) >= 50, timeout=10, message="no shadows compared")
        for route in BILLING_ROUTES:
            assert strangler(system, "mismatches", route).stdout.startswith("no shadow mismatches")


def _admin(system: Deployment) -> httpx.Client:
    return httpx.Client(
        base_url=system.proxy_url + "/_strangler",
        headers={"Authorization": "Bearer admin-test-token"},
        timeout=5,
    )


def _all_in(system: Deployment, mode: str) -> bool:
    with _admin(system) as admin:
        routes = answered(admin.get("/routes"))["routes"]
    return all(r["mode"] == mode for r in routes if r["name"] in BILLING_ROUTES)


def _shadows_compared(system: Deployment) -> float:
    with _admin(system) as admin:
        metrics = admin.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("strangler_shadow") and 'outcome="match"' in line and "_total" in line
    )


def posted(proxy: httpx.Client, path: str, **kwargs: Any) -> httpx.Response:
    """POST as a client that honours the fence: a 503 with ``Retry-After``
    (nothing was done: the user's records are being handed over, or the
    proxy has not yet heard that a handover ended) is asked again."""
    return poll(  # type: ignore[no-any-return]
        lambda: (
            response
            if (response := proxy.post(path, **kwargs)).status_code != 503
            or "retry-after" not in response.headers
            else None
        ),
        timeout=15,
        interval=0.1,
        message=f"POST {path} stayed fenced",
    )


def a_user_with_an_invoice(proxy: httpx.Client, plan: dict[str, Any]) -> dict[str, Any]:
    """A user who subscribes, is invoiced and pays with a key — as that user
    (X-User-ID), through the proxy; everything a test may look at again."""
    user = created(posted(proxy, "/users", json={"email": unique_email(), "name": "Ada"}))
    acting = {"X-User-ID": user["id"]}
    subscription = created(
        posted(
            proxy,
            "/billing/subscriptions",
            json={"user_id": user["id"], "plan_id": plan["id"]},
            headers=acting,
        )
    )
    invoice = created(
        posted(
            proxy,
            "/billing/invoices",
            json={"subscription_id": subscription["id"]},
            headers=acting,
        )
    )
    key = unique("pay")
    body = {"amount_minor": invoice["amount_minor"], "currency": invoice["currency"]}
    payment = created(
        posted(
            proxy,
            f"/billing/invoices/{invoice['id']}/payments",
            json=body,
            headers={**acting, "Idempotency-Key": key},
        )
    )
    return {
        "user": user,
        "acting": acting,
        "subscription": subscription,
        "invoice": invoice,
        "payment": payment,
        "key": key,
        "body": body,
    }


def ownership(system: Deployment) -> dict[str, Any]:
    with _admin(system) as admin:
        return answered(admin.get("/data/billing"))["ownership"]  # type: ignore[no-any-return]


def test_writes_follow_their_user_to_the_service_and_back(system: Deployment) -> None:
    with (
        httpx.Client(base_url=system.proxy_url, timeout=10) as proxy,
        httpx.Client(base_url=system.monolith_url, timeout=10) as monolith,
        httpx.Client(base_url=system.service_url, timeout=10) as service,
    ):
        plan = a_plan(proxy)
        assert strangler(system, "data", "start", "billing", "--wait").returncode == 0
        assert strangler(system, "data", "verify", "billing").returncode == 0

        moved = strangler(system, "set", "billing-invoices", "canary", "50", "-r", "half")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        with _admin(system) as admin:
            modes = {
                r["name"]: (r["mode"], r["percent"])
                for r in answered(admin.get("/routes"))["routes"]
            }
        assert all(modes[r] == ("canary", 50) for r in BILLING_ROUTES), modes  # they move together
        poll(
            lambda: (o := ownership(system))["service_buckets"] == 50 and o["converged"],
            timeout=30,
            message="the fence never handed half of the users over",
        )

        users = [a_user_with_an_invoice(proxy, plan) for _ in range(8)]
        on_service = [u for u in users if bucket("billing", u["user"]["id"]) < 50]
        assert on_service and len(on_service) < len(users), "both halves must be exercised"
        # Each record was accepted by its owner and reached the other side too.
        for customer in users:
            path = f"/billing/invoices/{customer['invoice']['id']}"
            poll(
                lambda p=path: service.get(p).status_code == monolith.get(p).status_code == 200,
                timeout=10,
                message=f"{path} did not reach both sides",
            )
        with sa.create_engine(system.service_db).connect() as connection:
            announced = {
                row[0]
                for row in connection.execute(
                    sa.text(
                        "SELECT aggregate_id FROM billing_outbox WHERE event_type = 'InvoiceIssued'"
                    )
                )
            }
        assert announced == {u["invoice"]["id"] for u in on_service}  # only the owner publishes

        back = strangler(system, "set", "billing-invoices", "monolith", "-r", "roll back")
        assert back.returncode == 0, back.stderr
        poll(
            lambda: (o := ownership(system))["service_buckets"] == 0 and o["converged"],
            timeout=30,
            message="the fence never brought the users back",
        )
        later = a_user_with_an_invoice(proxy, plan)
        assert monolith.get(f"/billing/invoices/{later['invoice']['id']}").status_code == 200
        verified = strangler(system, "data", "verify", "billing")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        for customer in [*users, later]:  # one notification per business event, whoever made it
            poll(
                lambda c=customer: (
                    sorted(kinds_of(monolith, c["user"]["id"]))
                    == ["invoice_issued", "receipt", "welcome"]
                ),
                timeout=15,
                message=f"notifications of {customer['user']['id']}",
            )
