"""The monolith as `make run` serves it: gunicorn workers on 127.0.0.1, over HTTP."""

from __future__ import annotations

import concurrent.futures
import uuid

import httpx
import pytest

from tests.support.ids import unique, unique_email
from tests.support.processes import Process, poll

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http(monolith_server):
    with httpx.Client(base_url=monolith_server.url, timeout=10) as client:
        yield client


def created(response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def kinds_of(http, user_id):
    return [n["kind"] for n in http.get(f"/notifications?user_id={user_id}").json()]


def test_register_subscribe_invoice_pay_and_be_notified(http, monolith_relay):
    user = created(http.post("/users", json={"email": unique_email(), "name": "Ada"}))
    plan = created(
        http.post(
            "/billing/plans",
            json={
                "code": unique("plan"),
                "name": "Pro",
                "price_minor": 2_500,
                "currency": "EUR",
                "interval": "month",
            },
        )
    )
    subscription = created(
        http.post("/billing/subscriptions", json={"user_id": user["id"], "plan_id": plan["id"]})
    )
    invoice = created(http.post("/billing/invoices", json={"subscription_id": subscription["id"]}))
    created(
        http.post(
            f"/billing/invoices/{invoice['id']}/payments",
            json={"amount_minor": 2_500, "currency": "EUR"},
            headers={"Idempotency-Key": unique("key")},
        )
    )

    assert http.get(f"/billing/invoices/{invoice['id']}").json()["status"] == "paid"
    expected = ["welcome", "invoice_issued", "receipt"]
    poll(lambda: kinds_of(http, user["id"]) == expected, message="notifications missing")


def test_the_relay_survives_a_kill_and_loses_nothing(http, monolith_relay, monolith_env, tmp_path):
    monolith_relay.kill()
    users = [
        created(http.post("/users", json={"email": unique_email(), "name": "Later"}))
        for _ in range(5)
    ]
    assert all(kinds_of(http, u["id"]) == [] for u in users)  # nobody delivers them yet

    restarted = Process("monolith-relay-2", monolith_relay.popen.args, monolith_env, tmp_path)
    try:
        for user in users:
            poll(
                lambda user=user: kinds_of(http, user["id"]) == ["welcome"],
                message="an event was lost across the relay's restart",
            )
    finally:
        restarted.stop()


def test_one_idempotency_key_pays_once_across_worker_processes(http):
    user = created(http.post("/users", json={"email": unique_email(), "name": "Race"}))
    plan = created(
        http.post(
            "/billing/plans",
            json={
                "code": unique("plan"),
                "name": "P",
                "price_minor": 900,
                "currency": "EUR",
                "interval": "month",
            },
        )
    )
    sub = created(
        http.post("/billing/subscriptions", json={"user_id": user["id"], "plan_id": plan["id"]})
    )
    invoice = created(http.post("/billing/invoices", json={"subscription_id": sub["id"]}))
    key = unique("key")

    def pay(_):
        with httpx.Client(base_url=str(http.base_url), timeout=10) as own:
            return own.post(
                f"/billing/invoices/{invoice['id']}/payments",
                json={"amount_minor": 900, "currency": "EUR"},
                headers={"Idempotency-Key": key},
            )

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(pay, range(16)))

    assert {r.status_code for r in responses} <= {201, 409}
    assert len({r.text for r in responses if r.status_code == 201}) == 1
    assert len(http.get(f"/billing/invoices/{invoice['id']}/payments").json()) == 1


def test_a_chunked_body_over_the_limit_is_413(http):
    def chunks():
        yield b'{"email": "big@example.com", "name": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = http.post("/users", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


def test_the_request_id_reaches_the_log(http, monolith_server):
    request_id = uuid.uuid4().hex
    http.post(
        "/users",
        json={"email": unique_email(), "name": "Logged"},
        headers={"X-Request-ID": request_id},
    )

    def lines():
        return [line for line in monolith_server.log().splitlines() if request_id in line]

    poll(lambda: len(lines()) >= 2, message="request id not logged on every line")
    lines = lines()
    assert any("monolith.users.services" in line for line in lines), lines
    assert any("POST /users" in line for line in lines), lines
