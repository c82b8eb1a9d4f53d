"""Payments under an Idempotency-Key: replayed, conflicting and concurrent."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from monolith.app import system_of
from servicekit.idempotency import IdempotencyKeys, KeyInFlight, Reply
from tests.support.api import ok, open_invoice, pay
from tests.support.ids import unique
from tests.support.processes import poll


def payments_of(client, invoice_id):
    return ok(client.get(f"/billing/invoices/{invoice_id}/payments"))


def test_a_replay_returns_the_first_reply_and_pays_once(client):
    invoice = open_invoice(client)
    key = unique("key")

    first = pay(client, invoice["id"], 1_000, key=key)
    replay = pay(client, invoice["id"], 1_000, key=key)

    assert first.status_code == replay.status_code == 201
    assert replay.get_json() == first.get_json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(payments_of(client, invoice["id"])) == 1


def test_the_same_key_with_another_body_is_refused(client):
    invoice = open_invoice(client)
    key = unique("key")
    ok(pay(client, invoice["id"], 1_000, key=key), 201)

    other_amount = pay(client, invoice["id"], 1_001, key=key)

    assert other_amount.status_code == 422
    assert other_amount.get_json()["code"] == "idempotency_key_reused"
    assert len(payments_of(client, invoice["id"])) == 1


def test_a_refusal_is_replayed_too(client):
    invoice = open_invoice(client, price_minor=500)
    key = unique("key")

    refused = pay(client, invoice["id"], 600, key=key)
    replayed = pay(client, invoice["id"], 600, key=key)

    assert refused.status_code == replayed.status_code == 422
    assert replayed.get_json() == refused.get_json()
    assert payments_of(client, invoice["id"]) == []


def test_a_request_that_fails_validation_stores_nothing(client):
    invoice = open_invoice(client)
    key = unique("key")

    invalid = client.post(
        f"/billing/invoices/{invoice['id']}/payments",
        json={"amount_minor": "lots", "currency": "EUR"},
        headers={"Idempotency-Key": key},
    )
    valid = pay(client, invoice["id"], 1_000, key=key)

    assert invalid.status_code == 422
    assert valid.status_code == 201  # the key was not burnt by the invalid request


def test_concurrent_requests_with_one_key_execute_once(monolith):
    invoice = open_invoice(monolith.test_client())
    key = unique("key")
    start = threading.Barrier(8)
    responses = []

    def attempt():
        client = monolith.test_client()
        start.wait()
        responses.append(pay(client, invoice["id"], 700, key=key))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    statuses = sorted(r.status_code for r in responses)
    bodies = {str(r.get_json()) for r in responses if r.status_code == 201}
    assert len(responses) == 8
    assert set(statuses) <= {201, 409}, statuses
    assert len(bodies) == 1  # every 201 is the one payment, replayed
    assert all(
        r.get_json()["code"] == "idempotency_key_in_flight"
        for r in responses
        if r.status_code == 409
    )
    assert len(payments_of(monolith.test_client(), invoice["id"])) == 1


def test_a_release_that_meets_the_same_lock_queue_is_retried_not_left_for_60s(
    monolith, monkeypatch
):
    """The command gave up waiting for SQLite's write lock, and so did its
    release: the key must not stay "in flight" until the reservation expires.
    The command's own error is the one raised; a retry soon executes."""
    keys = system_of(monolith).billing_idempotency
    attempts = []
    delete = IdempotencyKeys._delete_reservation

    def contended(self, scope, key, reserved_at):
        attempts.append(key)
        if len(attempts) == 1:
            raise sa.exc.OperationalError("DELETE", {}, Exception("database is locked"))
        delete(self, scope, key, reserved_at)

    monkeypatch.setattr(IdempotencyKeys, "_delete_reservation", contended)
    key = unique("key")

    def locked_out(uow):
        raise sa.exc.OperationalError(
            "UPDATE billing_invoices", {}, Exception("database is locked")
        )

    def run(execute):
        return keys.run(
            scope="test",
            key=key,
            request_fingerprint="same",
            uow=system_of(monolith).billing_uow(),
            execute=execute,
            render=lambda result: Reply(status=201, body={"result": result}),
            render_error=lambda error: Reply(status=409, body={}),
        )

    with pytest.raises(sa.exc.OperationalError, match="UPDATE billing_invoices"):
        run(locked_out)

    def paid(uow):
        uow.commit()
        return "paid"

    def retried() -> bool:
        try:
            return run(paid).body == {"result": "paid"}
        except KeyInFlight:
            return False

    poll(retried, timeout=5, message="the key stayed in flight after its release failed once")
    assert len(attempts) >= 2
