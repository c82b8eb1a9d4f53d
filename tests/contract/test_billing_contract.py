"""The billing API's contract, run against both sides (see conftest.py).

Same paths, statuses, bodies, error envelope, pagination and idempotency
behaviour: a client must not be able to tell which side answered.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.extracted.deployment import answered, created
from tests.support.ids import unique, unique_email

pytestmark = pytest.mark.e2e

MISSING = str(uuid.UUID(int=7))
ENVELOPE_KEYS = {"status", "code", "message", "request_id"}


# -- the API in a few verbs --------------------------------------------------------


def register(users: httpx.Client) -> dict[str, Any]:
    return created(users.post("/users", json={"email": unique_email(), "name": "Ada"}))


def plan_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "code": unique("plan"),
        "name": "Pro",
        "price_minor": 2_500,
        "currency": "EUR",
        "interval": "month",
    }
    return {**body, **overrides}


def create_plan(billing: httpx.Client, **overrides: Any) -> dict[str, Any]:
    return created(billing.post("/billing/plans", json=plan_body(**overrides)))


def subscribe(billing: httpx.Client, user: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    body = {"user_id": user["id"], "plan_id": plan["id"]}
    return created(billing.post("/billing/subscriptions", json=body))


def open_invoice(billing: httpx.Client, users: httpx.Client, price: int = 2_500) -> dict[str, Any]:
    subscription = subscribe(billing, register(users), create_plan(billing, price_minor=price))
    return created(billing.post("/billing/invoices", json={"subscription_id": subscription["id"]}))


def pay(
    billing: httpx.Client, invoice_id: str, amount: int, *, key: str | None = None, currency="EUR"
) -> httpx.Response:
    return billing.post(
        f"/billing/invoices/{invoice_id}/payments",
        json={"amount_minor": amount, "currency": currency},
        headers={"Idempotency-Key": key or unique("key")},
    )


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the one error envelope, with this status and code."""
    body = response.json()
    assert (response.status_code, body.get("code")) == (status, code), body
    assert set(body) >= ENVELOPE_KEYS and body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# -- plans --------------------------------------------------------------------------


def test_a_plan_is_created_read_and_listed_in_pages(billing):
    plan = create_plan(billing, price_minor=1_999)

    listed = billing.get("/billing/plans", params={"page_size": 1, "include_total": "true"})

    assert answered(billing.get(f"/billing/plans/{plan['id']}")) == plan
    assert set(plan) == {"id", "code", "name", "price_minor", "currency", "interval", "created_at"}
    assert plan["price_minor"] == 1_999
    assert len(answered(listed)) == 1
    pagination = json.loads(listed.headers["X-Pagination"])
    assert pagination["page"] == 1 and pagination["total"] >= 1


def test_a_bad_plan_is_refused_field_by_field(billing):
    body = refused(
        billing.post(
            "/billing/plans",
            json=plan_body(price_minor=9.99, currency="euro", interval="day", color="red"),
        ),
        422,
        "validation_failed",
    )

    assert set(body["fields"]["json"]) == {"price_minor", "currency", "interval", "color"}
    assert body["fields"]["json"]["color"] == ["Unknown field."]
    assert body["message"].startswith("The request is not valid: ")


def test_a_missing_field_a_string_amount_and_a_taken_code_are_refused(billing):
    plan = create_plan(billing)

    missing = refused(billing.post("/billing/plans", json={"code": "x"}), 422, "validation_failed")
    text = billing.post("/billing/plans", json=plan_body(price_minor="999"))
    taken = billing.post("/billing/plans", json=plan_body(code=plan["code"]))

    assert {"name", "price_minor", "currency", "interval"} <= set(missing["fields"]["json"])
    refused(text, 422, "validation_failed")
    refused(taken, 409, "plan_code_taken")


def test_unknown_ids_are_404_in_the_envelope(billing):
    for path in (
        f"/billing/plans/{MISSING}",
        f"/billing/subscriptions/{MISSING}",
        f"/billing/invoices/{MISSING}",
        f"/billing/invoices/{MISSING}/payments",
        "/billing/plans/not-a-uuid",
    ):
        refused(billing.get(path), 404, "not_found")
    refused(pay(billing, MISSING, 100), 404, "not_found")


def test_a_body_that_is_not_json_is_refused(billing):
    response = billing.post(
        "/billing/plans", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    body = refused(response, 400, "bad_request")
    assert body["fields"] == {"json": ["Invalid JSON body."]}


# -- subscriptions -------------------------------------------------------------------


def test_subscribing_asks_users_and_refuses_unknown_users_plans_and_doubles(billing, users):
    plan = create_plan(billing)
    user = register(users)

    unknown = billing.post(
        "/billing/subscriptions", json={"user_id": MISSING, "plan_id": plan["id"]}
    )
    no_plan = billing.post(
        "/billing/subscriptions", json={"user_id": user["id"], "plan_id": MISSING}
    )
    subscription = subscribe(billing, user, plan)
    twice = billing.post(
        "/billing/subscriptions", json={"user_id": user["id"], "plan_id": plan["id"]}
    )

    refused(unknown, 422, "unknown_user")
    refused(no_plan, 404, "not_found")
    assert (subscription["status"], subscription["cancelled_at"]) == ("active", None)
    refused(twice, 409, "already_subscribed")


def test_a_deactivated_user_cannot_subscribe(billing, users):
    user = register(users)
    answered(users.post(f"/users/{user['id']}/deactivate"))

    response = billing.post(
        "/billing/subscriptions",
        json={"user_id": user["id"], "plan_id": create_plan(billing)["id"]},
    )

    refused(response, 409, "user_inactive")


def test_subscriptions_are_filtered_by_user_and_status(billing, users):
    user = register(users)
    subscription = subscribe(billing, user, create_plan(billing))
    subscribe(billing, user, create_plan(billing))
    answered(billing.post(f"/billing/subscriptions/{subscription['id']}/cancel"))

    cancelled = billing.get(
        "/billing/subscriptions",
        params={"user_id": user["id"], "status": "cancelled", "include_total": "true"},
    )

    assert [s["id"] for s in answered(cancelled)] == [subscription["id"]]
    assert json.loads(cancelled.headers["X-Pagination"])["total"] == 1
    refused(
        billing.get("/billing/subscriptions", params={"status": "paused"}), 422, "validation_failed"
    )


def test_a_cancelled_subscription_is_not_cancelled_again_nor_invoiced(billing, users):
    subscription = subscribe(billing, register(users), create_plan(billing))

    cancelled = answered(billing.post(f"/billing/subscriptions/{subscription['id']}/cancel"))
    twice = billing.post(f"/billing/subscriptions/{subscription['id']}/cancel")
    invoiced = billing.post("/billing/invoices", json={"subscription_id": subscription["id"]})

    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    refused(twice, 409, "subscription_not_active")
    refused(invoiced, 409, "subscription_not_active")


# -- invoices -----------------------------------------------------------------------


def test_invoices_cover_consecutive_periods(billing, users):
    subscription = subscribe(billing, register(users), create_plan(billing, price_minor=4_900))

    first = created(billing.post("/billing/invoices", json={"subscription_id": subscription["id"]}))
    second = created(
        billing.post("/billing/invoices", json={"subscription_id": subscription["id"]})
    )

    assert (first["status"], first["amount_minor"], first["outstanding_minor"]) == (
        "open",
        4_900,
        4_900,
    )
    assert first["period_end"] == second["period_start"]
    assert answered(billing.get(f"/billing/invoices/{first['id']}")) == first


def test_a_draft_is_issued_once_and_voided_once(billing, users):
    subscription = subscribe(billing, register(users), create_plan(billing))
    draft = created(
        billing.post(
            "/billing/invoices", json={"subscription_id": subscription["id"], "draft": True}
        )
    )

    issued = answered(billing.post(f"/billing/invoices/{draft['id']}/issue"))
    reissued = billing.post(f"/billing/invoices/{draft['id']}/issue")
    voided = answered(billing.post(f"/billing/invoices/{draft['id']}/void"))

    assert (draft["status"], draft["issued_at"]) == ("draft", None)
    assert issued["status"] == "open"
    refused(reissued, 409, "invalid_invoice_transition")
    assert voided["status"] == "void"
    refused(
        billing.post(f"/billing/invoices/{draft['id']}/void"), 409, "invalid_invoice_transition"
    )


def test_invoices_are_listed_by_user_and_status(billing, users):
    mine = open_invoice(billing, users)
    theirs = open_invoice(billing, users)
    created(pay(billing, theirs["id"], theirs["amount_minor"]))

    by_user = billing.get(
        "/billing/invoices", params={"user_id": mine["user_id"], "include_total": "true"}
    )
    paid = answered(billing.get("/billing/invoices", params={"status": "paid", "page_size": 100}))

    assert [i["id"] for i in answered(by_user)] == [mine["id"]]
    assert json.loads(by_user.headers["X-Pagination"])["total"] == 1
    assert theirs["id"] in [i["id"] for i in paid] and mine["id"] not in [i["id"] for i in paid]
    refused(billing.get("/billing/invoices", params={"status": "unpaid"}), 422, "validation_failed")
    refused(billing.get("/billing/invoices", params={"page_size": 1000}), 422, "validation_failed")
    refused(billing.get("/billing/invoices", params={"page": 10**7}), 422, "validation_failed")


def test_invoices_page_by_cursor_without_a_count(billing, users):
    user = register(users)
    plans = [create_plan(billing) for _ in range(5)]
    mine = []
    for plan in plans:
        subscription = subscribe(billing, user, plan)
        mine.append(
            created(billing.post("/billing/invoices", json={"subscription_id": subscription["id"]}))
        )

    walked, cursor = [], None
    while True:
        params = {"user_id": user["id"], "page_size": 2, **({"cursor": cursor} if cursor else {})}
        page = billing.get("/billing/invoices", params=params)
        walked += answered(page)
        pagination = json.loads(page.headers["X-Pagination"])
        assert "total" not in pagination and pagination["page_size"] == 2
        if not pagination["has_more"]:
            break
        cursor = pagination["next_cursor"]

    assert [i["id"] for i in walked] == [i["id"] for i in reversed(mine)], "newest first"
    tampered = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for bad in ("nonsense", tampered):
        body = refused(
            billing.get("/billing/invoices", params={"user_id": user["id"], "cursor": bad}),
            422,
            "validation_failed",
        )
        assert "cursor" in body["fields"]["query"]
    both = billing.get("/billing/invoices", params={"cursor": cursor, "page": 2})
    refused(both, 422, "validation_failed")


def test_a_cursor_from_one_side_is_read_by_the_other(deployment):
    """During a canary the proxy may send a client's next page to the other side."""
    sides = {"monolith": deployment.monolith_url, "service": deployment.service_url}
    cursors = {}
    for side, url in sides.items():
        for _ in range(2):
            created(httpx.post(f"{url}/billing/plans", json=plan_body(), timeout=10))
        first = httpx.get(f"{url}/billing/plans", params={"page_size": 1}, timeout=10)
        cursors[side] = json.loads(first.headers["X-Pagination"])["next_cursor"]

    for side, url in sides.items():
        other = cursors["service" if side == "monolith" else "monolith"]
        params = {"page_size": 1, "cursor": other}
        assert len(answered(httpx.get(f"{url}/billing/plans", params=params, timeout=10))) == 1


# -- payments -----------------------------------------------------------------------


def test_partial_then_full_payment_makes_the_invoice_paid(billing, users):
    invoice = open_invoice(billing, users, price=2_500)

    first = created(pay(billing, invoice["id"], 1_000))
    created(pay(billing, invoice["id"], 1_500))
    paid = answered(billing.get(f"/billing/invoices/{invoice['id']}"))

    assert set(first) == {"id", "invoice_id", "amount_minor", "currency", "created_at"}
    assert (paid["status"], paid["outstanding_minor"], paid["amount_paid_minor"]) == (
        "paid",
        0,
        2_500,
    )
    payments = answered(billing.get(f"/billing/invoices/{invoice['id']}/payments"))
    assert [p["amount_minor"] for p in payments] == [1_000, 1_500]


def test_overpayment_other_currencies_and_paying_a_paid_invoice_are_refused(billing, users):
    invoice = open_invoice(billing, users, price=2_500)

    over = refused(pay(billing, invoice["id"], 2_501), 422, "overpayment")
    refused(pay(billing, invoice["id"], 100, currency="USD"), 422, "currency_mismatch")
    created(pay(billing, invoice["id"], 2_500))
    refused(pay(billing, invoice["id"], 1), 409, "invalid_invoice_transition")

    assert over["fields"] == {"outstanding_minor": 2_500, "amount_minor": 2_501}
    assert len(answered(billing.get(f"/billing/invoices/{invoice['id']}/payments"))) == 1


def test_a_payment_needs_a_key_and_a_positive_integer_amount(billing, users):
    invoice = open_invoice(billing, users)
    url = f"/billing/invoices/{invoice['id']}/payments"

    no_key = refused(
        billing.post(url, json={"amount_minor": 100, "currency": "EUR"}), 422, "validation_failed"
    )
    refused(pay(billing, invoice["id"], 0), 422, "validation_failed")
    refused(
        billing.post(
            url, json={"amount_minor": 10.5, "currency": "EUR"}, headers={"Idempotency-Key": "k"}
        ),
        422,
        "validation_failed",
    )
    refused(
        billing.post(
            url,
            json={"amount_minor": 1, "currency": "EUR", "tip": 5},
            headers={"Idempotency-Key": unique("key")},
        ),
        422,
        "validation_failed",
    )

    assert "Idempotency-Key" in no_key["fields"]["headers"]
    assert answered(billing.get(url)) == []


def test_a_replay_returns_the_first_reply_and_pays_once(billing, users):
    invoice = open_invoice(billing, users, price=2_500)
    key = unique("key")

    first = pay(billing, invoice["id"], 1_000, key=key)
    replay = pay(billing, invoice["id"], 1_000, key=key)

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(answered(billing.get(f"/billing/invoices/{invoice['id']}/payments"))) == 1


def test_one_key_with_another_body_is_refused_and_refusals_are_replayed(billing, users):
    invoice = open_invoice(billing, users, price=2_500)
    key = unique("key")
    created(pay(billing, invoice["id"], 1_000, key=key))

    other_body = pay(billing, invoice["id"], 1_500, key=key)
    refusal_key = unique("key")
    over = pay(billing, invoice["id"], 9_999, key=refusal_key)
    over_again = pay(billing, invoice["id"], 9_999, key=refusal_key)

    refused(other_body, 422, "idempotency_key_reused")
    refused(over, 422, "overpayment")
    assert over_again.json() == over.json()
    assert over_again.headers["Idempotent-Replayed"] == "true"
