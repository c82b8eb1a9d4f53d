"""The ownership check inside a billing app: what it refuses, and that a
refusal is never stored as an idempotency key's reply — even when it comes
from inside the write's transaction, after the key was reserved (the slot
changed hands between the request hook and the transaction)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from monolith.app import system_of
from monolith.billing import orm
from servicekit.db import utcnow
from servicekit.ownership import SLOTS, OwnershipGuard, bucket
from strangler_proxy.domain import bucket as proxy_bucket
from tests.support.api import open_invoice
from tests.support.ids import unique


def own_every_slot(app: Flask, owner: str, state: str = "owned") -> None:
    with system_of(app).engine.begin() as connection:
        connection.execute(orm.ownership.delete())
        connection.execute(
            orm.ownership.insert(),
            [
                {"slot": slot, "owner": owner, "state": state, "epoch": 1, "changed_at": utcnow()}
                for slot in SLOTS
            ],
        )


def test_an_empty_ownership_table_means_this_side_owns_everything(client):
    invoice = open_invoice(client)
    paid = client.post(
        f"/billing/invoices/{invoice['id']}/payments",
        json={"amount_minor": 100, "currency": "EUR"},
        headers={"Idempotency-Key": unique("key"), "X-User-ID": invoice["user_id"]},
    )
    assert paid.status_code == 201


def test_a_refusal_from_inside_the_transaction_is_not_stored_under_the_key(
    monolith: Flask, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoice = open_invoice(client)
    checked = OwnershipGuard._check

    def flipped_after_the_hook(self, connection, slot, *, lock):  # type: ignore[no-untyped-def]
        if lock:  # only the check inside the transaction sees the new owner
            checked(self, connection, slot, lock=lock)

    monkeypatch.setattr(OwnershipGuard, "_check", flipped_after_the_hook)
    own_every_slot(monolith, "service")
    request = {
        "path": f"/billing/invoices/{invoice['id']}/payments",
        "json": {"amount_minor": 100, "currency": "EUR"},
        "headers": {"Idempotency-Key": unique("key"), "X-User-ID": invoice["user_id"]},
    }
    refused = client.post(request["path"], json=request["json"], headers=request["headers"])
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["code"] == "not_owner"
    with system_of(monolith).engine.connect() as connection:
        keys = connection.execute(sa.select(sa.func.count()).select_from(orm.idempotency_keys))
        assert keys.scalar_one() == 0

    own_every_slot(monolith, "monolith")
    executed = client.post(request["path"], json=request["json"], headers=request["headers"])
    assert executed.status_code == 201, executed.get_json()
    assert "Idempotent-Replayed" not in executed.headers


def test_the_bucket_formula_is_pinned_for_the_proxy_and_the_apps():
    # sha256("billing\\0" + key)[:8] mod 100: changing it would move every user's
    # records to the other side at once.
    keys = ("ada", "bob", "0", "user-1", "ünïcode")
    assert [bucket("billing", key) for key in keys] == [17, 11, 5, 97, 59]
    assert [proxy_bucket("billing", key) for key in keys] == [17, 11, 5, 97, 59]
    users = [unique("user") for _ in range(500)]
    assert len({bucket("billing", user) for user in users}) > 90  # and they spread


def test_a_side_that_gave_billing_up_for_good_answers_410(monolith: Flask, client) -> None:
    """The decommission's decision (every slot ``retired``): billing's routes
    answer 410 Gone, reads too (the e2e test tests/datamover/test_decommission.py
    goes on to the archive, where a read that names no user fails and is
    told apart from a broken database)."""
    invoice = open_invoice(client)
    system = system_of(monolith)
    assert not system.billing_ownership.retired()

    own_every_slot(monolith, "service", state="retired")

    for answer in (
        client.get(f"/billing/invoices/{invoice['id']}", headers={"X-User-ID": invoice["user_id"]}),
        client.post("/billing/plans", json={"code": unique("plan")}),
        # A read that names no user is not checked beforehand (no query of ours
        # on a list); this process has seen the decision by now, though.
        client.get("/billing/invoices"),
    ):
        assert answer.status_code == 410, answer.get_json()
        assert answer.get_json()["code"] == "decommissioned"
    assert system.billing_ownership.retired()
    assert not system.billing_ownership.archived()
    assert "billing" in system.relays  # its outbox is still delivered until archived
