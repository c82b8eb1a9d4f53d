"""The billing API, on SQLite and PostgreSQL alike: plans, subscriptions,
invoices and payments, and every refusal they can answer."""

from __future__ import annotations

import json
import uuid

from tests.support.api import (
    create_plan,
    invoice,
    kinds,
    ok,
    open_invoice,
    pay,
    register_user,
    subscribe,
)

MISSING = str(uuid.UUID(int=7))


def test_plans_keep_money_as_integer_minor_units(client):
    plan = create_plan(client, price_minor=1_999)

    assert ok(client.get(f"/billing/plans/{plan['id']}")) == plan
    assert plan["price_minor"] == 1_999


def test_a_plan_refuses_floats_strings_bad_currencies_and_duplicates(client):
    plan = create_plan(client)
    base = {"code": "x1", "name": "X", "currency": "EUR", "interval": "month"}

    assert client.post("/billing/plans", json={**base, "price_minor": 9.99}).status_code == 422
    assert client.post("/billing/plans", json={**base, "price_minor": "999"}).status_code == 422
    bad_currency = client.post(
        "/billing/plans", json={**base, "price_minor": 1, "currency": "euro"}
    )
    assert bad_currency.status_code == 422
    assert "currency" in bad_currency.get_json()["fields"]["json"]
    bad_interval = client.post("/billing/plans", json={**base, "price_minor": 1, "interval": "day"})
    assert bad_interval.status_code == 422
    taken = client.post("/billing/plans", json={**base, "code": plan["code"], "price_minor": 1})
    assert taken.status_code == 409


def test_subscribing_checks_the_user_through_the_users_facade(client):
    plan = create_plan(client)
    user = register_user(client)

    unknown = client.post(
        "/billing/subscriptions", json={"user_id": MISSING, "plan_id": plan["id"]}
    )
    no_plan = client.post(
        "/billing/subscriptions", json={"user_id": user["id"], "plan_id": MISSING}
    )
    subscription = subscribe(client, user, plan)
    twice = client.post(
        "/billing/subscriptions", json={"user_id": user["id"], "plan_id": plan["id"]}
    )

    assert unknown.status_code == 422
    assert unknown.get_json()["code"] == "unknown_user"
    assert no_plan.status_code == 404
    assert subscription["status"] == "active"
    assert twice.status_code == 409
    assert twice.get_json()["code"] == "already_subscribed"


def test_a_deactivated_user_cannot_subscribe(client):
    user = register_user(client)
    ok(client.post(f"/users/{user['id']}/deactivate"))

    response = client.post(
        "/billing/subscriptions", json={"user_id": user["id"], "plan_id": create_plan(client)["id"]}
    )

    assert response.status_code == 409
    assert response.get_json()["code"] == "user_inactive"


def test_invoices_cover_consecutive_periods_of_a_subscription(client):
    subscription = subscribe(client, register_user(client), create_plan(client, 4_900))

    first = invoice(client, subscription)
    second = invoice(client, subscription)

    assert first["status"] == "open"
    assert first["amount_minor"] == 4_900
    assert first["period_end"] == second["period_start"]
    assert first["period_start"] < first["period_end"]


def test_a_draft_invoice_is_issued_or_voided_once(client):
    subscription = subscribe(client, register_user(client), create_plan(client))
    draft = invoice(client, subscription, draft=True)

    issued = ok(client.post(f"/billing/invoices/{draft['id']}/issue"))
    reissued = client.post(f"/billing/invoices/{draft['id']}/issue")
    voided = ok(client.post(f"/billing/invoices/{draft['id']}/void"))

    assert draft["status"] == "draft"
    assert issued["status"] == "open"
    assert reissued.status_code == 409
    assert voided["status"] == "void"
    assert client.post(f"/billing/invoices/{draft['id']}/void").status_code == 409


def test_partial_then_full_payment_makes_the_invoice_paid(client):
    open_one = open_invoice(client, price_minor=2_500)

    first = ok(pay(client, open_one["id"], 1_000), 201)
    after_first = ok(client.get(f"/billing/invoices/{open_one['id']}"))
    ok(pay(client, open_one["id"], 1_500), 201)
    paid = ok(client.get(f"/billing/invoices/{open_one['id']}"))

    assert first["amount_minor"] == 1_000
    assert (after_first["status"], after_first["outstanding_minor"]) == ("open", 1_500)
    assert (paid["status"], paid["outstanding_minor"]) == ("paid", 0)
    assert paid["paid_at"]
    payments = ok(client.get(f"/billing/invoices/{open_one['id']}/payments"))
    assert [p["amount_minor"] for p in payments] == [1_000, 1_500]
    assert kinds(client, open_one["user_id"]) == ["welcome", "invoice_issued", "receipt"]


def test_overpayment_wrong_currency_and_paying_a_paid_invoice_are_refused(client):
    open_one = open_invoice(client, price_minor=2_500)

    over = pay(client, open_one["id"], 2_501)
    dollars = pay(client, open_one["id"], 100, currency="USD")
    ok(pay(client, open_one["id"], 2_500), 201)
    again = pay(client, open_one["id"], 1)

    assert (over.status_code, over.get_json()["code"]) == (422, "overpayment")
    assert (dollars.status_code, dollars.get_json()["code"]) == (422, "currency_mismatch")
    assert (again.status_code, again.get_json()["code"]) == (409, "invalid_invoice_transition")
    assert len(ok(client.get(f"/billing/invoices/{open_one['id']}/payments"))) == 1


def test_a_payment_needs_a_positive_integer_amount_and_a_key(client):
    open_one = open_invoice(client)
    url = f"/billing/invoices/{open_one['id']}/payments"

    no_key = client.post(url, json={"amount_minor": 100, "currency": "EUR"})
    zero = pay(client, open_one["id"], 0)
    fractional = client.post(
        url, json={"amount_minor": 10.5, "currency": "EUR"}, headers={"Idempotency-Key": "k"}
    )

    assert no_key.status_code == 422
    assert "Idempotency-Key" in no_key.get_json()["fields"]["headers"]
    assert zero.status_code == 422
    assert fractional.status_code == 422
    assert ok(client.get(url)) == []


def test_paying_an_unknown_invoice_is_404(client):
    assert pay(client, MISSING, 100).status_code == 404


def test_invoices_are_listed_by_user_and_status_in_pages(client):
    open_one = open_invoice(client)
    other = open_invoice(client)
    ok(pay(client, other["id"], other["amount_minor"]), 201)

    mine = client.get(f"/billing/invoices?user_id={open_one['user_id']}&include_total=true")
    paid = ok(client.get("/billing/invoices?status=paid"))
    bad = client.get("/billing/invoices?status=unpaid")

    assert [i["id"] for i in mine.get_json()] == [open_one["id"]]
    assert json.loads(mine.headers["X-Pagination"])["total"] == 1
    assert [i["id"] for i in paid] == [other["id"]]
    assert bad.status_code == 422


def test_cancelled_subscriptions_are_not_invoiced(client):
    subscription = subscribe(client, register_user(client), create_plan(client))

    cancelled = ok(client.post(f"/billing/subscriptions/{subscription['id']}/cancel"))
    twice = client.post(f"/billing/subscriptions/{subscription['id']}/cancel")
    invoiced = client.post("/billing/invoices", json={"subscription_id": subscription["id"]})

    assert cancelled["status"] == "cancelled"
    assert twice.status_code == 409
    assert invoiced.status_code == 409
    assert kinds(client, subscription["user_id"]) == ["welcome", "subscription_cancelled"]


def test_deactivating_a_user_cancels_their_subscriptions(client):
    user = register_user(client)
    subscriptions = [subscribe(client, user, create_plan(client)) for _ in range(2)]

    ok(client.post(f"/users/{user['id']}/deactivate"))

    listed = ok(client.get(f"/billing/subscriptions?user_id={user['id']}"))
    assert {s["status"] for s in listed} == {"cancelled"}
    assert len(listed) == len(subscriptions)
    assert kinds(client, user["id"]).count("subscription_cancelled") == 2
