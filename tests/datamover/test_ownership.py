"""Issue 8's data layer: one writer per record, handed over user bucket by user
bucket through a fence, with the sync running both ways. Both billing apps run
in process on the mover's pair of databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from datamover.app import runners_of
from datamover.runner import MoveRunner
from servicekit.db import create_engine
from servicekit.ids import new_id
from servicekit.ownership import bucket
from servicekit.signing import Keyring
from tests.datamover.sides import (
    Apps,
    Customer,
    Traffic,
    a_plan,
    as_user,
    both_apps,
    hand_over,
    subscribed,
    user_in,
)
from tests.datamover.support import FAST, Pair, fresh_verdict, same_rows, wait_for_phase
from tests.support.processes import poll


@pytest.fixture
def apps(pair: Pair) -> Iterator[Apps]:
    with both_apps(pair) as built:
        yield built


@pytest.fixture
def streaming(mover: Flask) -> MoveRunner:
    """The billing move, backfilled and streaming both ways."""
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    return runner


def count(url: str, table: str, where: str = "1 = 1") -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}"))
        total = int(found.scalar_one())
    engine.dispose()
    return total


def counts(pair: Pair) -> dict[str, tuple[int, int]]:
    tables = ("billing_plans", "billing_subscriptions", "billing_invoices", "billing_payments")
    return {
        table: (count(pair.source, table), count(pair.target, table))
        for table in (*tables, "billing_idempotency_keys", "billing_outbox")
    }


def settled(runner: MoveRunner) -> None:
    """Both streams have applied everything committed until now."""
    assert runner.wait_for_capture(time.time()), "the streams did not catch up"


def test_a_write_to_the_side_that_does_not_own_it_is_refused_and_changes_nothing(
    pair: Pair, apps: Apps, streaming: MoveRunner
) -> None:
    plan = a_plan(apps)
    theirs = user_in(apps, 0, 50)  # the service's after the handover
    ours = user_in(apps, 50, 100)  # still the monolith's
    invoice = {"subscription_id": subscribed(apps, "monolith", theirs, plan)}
    hand_over(streaming, 50, "monolith")
    settled(streaming)
    before = counts(pair)

    wrong = [
        ("monolith", "/billing/invoices", invoice, theirs),
        ("service", "/billing/subscriptions", {"user_id": ours, "plan_id": plan["id"]}, ours),
        (
            "service",
            "/billing/plans",
            {"code": "x", "name": "X", "price_minor": 1, "currency": "EUR", "interval": "month"},
            ours,
        ),
    ]
    for side, path, body, user in wrong:
        response = apps.client(side).post(path, json=body, headers=as_user(user))
        assert response.status_code == 409, (side, path, response.get_json())
        assert response.get_json()["code"] == "not_owner"
        assert response.get_json()["fields"]["owner"] != side
    # A read too: the old owner's copy may be behind what the user was told.
    stale = apps.client("monolith").get(
        f"/billing/invoices?user_id={theirs}", headers=as_user(theirs)
    )
    assert stale.status_code == 409
    # An idempotent payment refused stores no reply under its key, on either side.
    paid = apps.client("monolith").post(
        f"/billing/invoices/{new_id()}/payments",
        json={"amount_minor": 1, "currency": "EUR"},
        headers={**as_user(theirs), "Idempotency-Key": "refused-key"},
    )
    assert paid.status_code == 409 and paid.get_json()["code"] == "not_owner"
    # Without an acting user, a write cannot be placed while data moves.
    anonymous = apps.client("monolith").post("/billing/invoices", json=invoice)
    assert anonymous.status_code == 422
    assert anonymous.get_json()["code"] == "acting_user_required"

    settled(streaming)
    assert counts(pair) == before
    for url in (pair.source, pair.target):
        assert count(url, "billing_idempotency_keys", "key = 'refused-key'") == 0
    # The owner accepts the same write.
    accepted = apps.client("service").post(
        "/billing/invoices", json=invoice, headers=as_user(theirs)
    )
    assert accepted.status_code == 201, accepted.get_json()


def test_a_moving_slot_answers_503_with_retry_after_holds_no_one_else_and_is_finished_later(
    apps: Apps, streaming: MoveRunner
) -> None:
    plan = a_plan(apps)
    user = user_in(apps, 0, 100)
    other = user_in(apps, 0, 100)
    while bucket("billing", other) == bucket("billing", user):
        other = user_in(apps, 0, 100)
    subscription = subscribed(apps, "monolith", user, plan)
    streaming.ownership.initialise()
    streaming.ownership.mark_moving([bucket("billing", user)])
    for side in ("monolith", "service"):
        response = apps.client(side).post(
            "/billing/invoices", json={"subscription_id": subscription}, headers=as_user(user)
        )
        assert response.status_code == 503, response.get_json()
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["code"] == "ownership_moving"
    subscribing = apps.client("monolith").post(
        "/billing/subscriptions",
        json={"user_id": other, "plan_id": plan["id"]},
        headers=as_user(other),
    )
    assert subscribing.status_code == 201, subscribing.get_json()

    # A slot left moving (a mover killed mid-handover) is finished by the next
    # convergence: here back to its owner, the monolith.
    assert hand_over(streaming, 0, "monolith")["moving"] == []
    released = apps.client("monolith").post(
        "/billing/invoices", json={"subscription_id": subscription}, headers=as_user(user)
    )
    assert released.status_code == 201, released.get_json()


def test_a_key_reserved_just_before_a_handover_is_not_deleted_during_it(
    apps: Apps, streaming: MoveRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys move with the records, so their writes are fenced like the
    records'. Here the handover begins right after a payment reserved its key:
    the payment is refused (503, the fence), and its key is not deleted on
    the side that no longer may write it — unfenced, that delete came after
    the mover had carried the reservation over, leaving it "in progress" on
    the new owner and on one side only."""
    from monolith.app import system_of
    from servicekit.idempotency import IdempotencyKeys

    plan = a_plan(apps)
    user = user_in(apps, 0, 100)
    subscription = subscribed(apps, "monolith", user, plan)
    invoice = apps.client("monolith").post(
        "/billing/invoices", json={"subscription_id": subscription}, headers=as_user(user)
    )
    assert invoice.status_code == 201, invoice.get_json()
    streaming.ownership.initialise()

    fenced: list[str] = []
    reserve = IdempotencyKeys._reserve

    def reserve_then_hand_over(self, *args):  # type: ignore[no-untyped-def]
        stored = reserve(self, *args)
        streaming.ownership.mark_moving([bucket("billing", user)])
        fenced.append("moving")
        return stored

    def spy(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        writes = not statement.lstrip().upper().startswith("SELECT")
        if fenced and writes and "billing_idempotency_keys" in statement:
            fenced.append(statement.split()[0])

    monkeypatch.setattr(IdempotencyKeys, "_reserve", reserve_then_hand_over)
    engine = system_of(apps.monolith).engine
    sa.event.listen(engine, "before_cursor_execute", spy)
    try:
        paid = apps.client("monolith").post(
            f"/billing/invoices/{invoice.get_json()['id']}/payments",
            json={"amount_minor": 1, "currency": "EUR"},
            headers={**as_user(user), "Idempotency-Key": "fenced-key"},
        )
    finally:
        sa.event.remove(engine, "before_cursor_execute", spy)

    assert paid.status_code == 503, paid.get_json()
    assert paid.get_json()["code"] == "ownership_moving"
    assert fenced == ["moving"]  # nothing written to the keys once the fence was up


def customers(apps: Apps, plan: dict[str, Any], ranges: list[tuple[int, int]]) -> list[Customer]:
    """One subscribed customer per bucket range, subscribed on the monolith."""
    found = []
    for lo, hi in ranges:
        user = user_in(apps, lo, hi)
        found.append(Customer(user, subscribed(apps, "monolith", user, plan)))
    return found


def where_invoices_are(pair: Pair, ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per invoice: (rows in the monolith, rows in the service)."""
    found: dict[str, tuple[int, int]] = {}
    for url_index, url in enumerate((pair.source, pair.target)):
        engine = create_engine(url)
        with engine.connect() as connection:
            present = {
                row[0] for row in connection.execute(sa.text("SELECT id FROM billing_invoices"))
            }
        engine.dispose()
        for invoice in ids:
            before = found.get(invoice, (0, 0))
            found[invoice] = (
                (int(invoice in present), before[1])
                if url_index == 0
                else (before[0], int(invoice in present))
            )
    return found


def announcements(url: str) -> dict[str, int]:
    """InvoiceIssued events in a side's outbox, per invoice."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT aggregate_id, count(*) FROM billing_outbox "
                "WHERE event_type LIKE '%InvoiceIssued%' GROUP BY aggregate_id"
            )
        ).all()
    engine.dispose()
    return {row[0]: int(row[1]) for row in rows}


def test_a_handover_under_writes_to_both_sides_loses_nothing_and_announces_each_once(
    pair: Pair, apps: Apps, streaming: MoveRunner
) -> None:
    plan = a_plan(apps)
    # Buckets 0..9 are the service's first; 10..49 move during the traffic; 50.. never.
    people = customers(apps, plan, [(0, 10), (0, 10), (10, 50), (10, 50), (50, 100), (50, 100)])
    hand_over(streaming, 10, "monolith")
    with Traffic(apps, people) as traffic:
        traffic.wait_for(30)
        handover = hand_over(streaming, 50, "monolith")
        traffic.wait_for(30)
        traffic.wait_until_on(people[:4], "service")
    assert not traffic.unexpected, traffic.unexpected[:3]
    settled(streaming)

    assert handover["last_handover"]["slots"] == list(range(10, 50))
    hold = handover["last_handover"]["hold_seconds"]
    print(f"\n{pair.backend}: 40 buckets handed over under writes, held {hold:.3f}s")
    assert hold < 5
    moving_users = {customer.user for customer in people[2:4]}
    assert set(traffic.held) <= moving_users, "a user whose bucket did not change was held"
    assert all(customer.side == "service" for customer in people[:4])
    # Nothing lost, nothing doubled: each accepted invoice in both databases…
    assert set(where_invoices_are(pair, list(traffic.accepted)).values()) == {(1, 1)}
    # …announced exactly once, by the side that accepted it.
    by_side = {"monolith": announcements(pair.source), "service": announcements(pair.target)}
    for invoice, side in traffic.accepted.items():
        other = "service" if side == "monolith" else "monolith"
        assert by_side[side].get(invoice) == 1, (invoice, side)
        assert invoice not in by_side[other], (invoice, other)
    assert fresh_verdict(streaming)["clean"]
    same_rows(pair)


def test_a_write_on_the_service_reaches_the_monolith_and_is_never_captured_back(
    pair: Pair, apps: Apps, streaming: MoveRunner
) -> None:
    plan = a_plan(apps)
    user = user_in(apps, 0, 100)
    subscription = subscribed(apps, "monolith", user, plan)
    hand_over(streaming, 100, "service")
    settled(streaming)
    forward, reverse = streaming.streams
    carried_forward, carried_back = forward.consumed, reverse.consumed

    response = apps.client("service").post(
        "/billing/invoices", json={"subscription_id": subscription}, headers=as_user(user)
    )
    assert response.status_code == 201, response.get_json()
    invoice = response.get_json()["id"]
    poll(
        lambda: count(pair.source, "billing_invoices", f"id = '{invoice}'") == 1,
        timeout=10,
        message="the service's invoice never reached the monolith",
    )
    settled(streaming)
    settled(streaming)  # and once more: an echo would have been captured by now
    assert reverse.consumed == carried_back + 1
    assert forward.consumed == carried_forward, "the applied change was captured back"
    for url in (pair.source, pair.target):
        assert count(url, "strangler_changes") == 0
    same_rows(pair)


def test_an_idempotent_payment_retried_after_its_user_moved_replays_and_pays_once(
    pair: Pair, apps: Apps, streaming: MoveRunner
) -> None:
    plan = a_plan(apps)
    user = user_in(apps, 0, 100)
    subscription = subscribed(apps, "monolith", user, plan)
    created = apps.client("monolith").post(
        "/billing/invoices", json={"subscription_id": subscription}, headers=as_user(user)
    )
    invoice = created.get_json()
    pay = {
        "path": f"/billing/invoices/{invoice['id']}/payments",
        "json": {"amount_minor": 400, "currency": "EUR"},
        "headers": {**as_user(user), "Idempotency-Key": "pay-once"},
    }
    first = apps.client("monolith").post(pay["path"], json=pay["json"], headers=pay["headers"])
    assert first.status_code == 201, first.get_json()

    hand_over(streaming, bucket("billing", user) + 1, "monolith")
    old_side = apps.client("monolith").post(pay["path"], json=pay["json"], headers=pay["headers"])
    assert old_side.status_code == 409 and old_side.get_json()["code"] == "not_owner"
    retried = apps.client("service").post(pay["path"], json=pay["json"], headers=pay["headers"])
    assert retried.status_code == 201, retried.get_json()
    assert retried.headers.get("Idempotent-Replayed") == "true"
    assert retried.get_json() == first.get_json()

    settled(streaming)
    for url in (pair.source, pair.target):
        assert count(url, "billing_payments", f"invoice_id = '{invoice['id']}'") == 1
        paid = count(url, "billing_invoices", f"id = '{invoice['id']}' AND amount_paid_minor = 400")
        assert paid == 1


def test_cut_over_then_roll_back_under_writes_loses_nothing_and_verifies_clean(
    pair: Pair, apps: Apps, streaming: MoveRunner
) -> None:
    plan = a_plan(apps)
    people = customers(apps, plan, [(0, 34), (34, 67), (67, 100), (0, 100)])
    with Traffic(apps, people) as traffic:
        traffic.wait_for(20)
        cut_over = hand_over(streaming, 100, "service")["last_handover"]["hold_seconds"]
        traffic.wait_for(20)
        traffic.wait_until_on(people, "service")
        assert all(customer.side == "service" for customer in people)
        # Plans are the service's too: the monolith refuses a new one.
        refused = apps.client("monolith").post(
            "/billing/plans",
            json={
                "code": "late",
                "name": "L",
                "price_minor": 1,
                "currency": "EUR",
                "interval": "month",
            },
        )
        assert refused.status_code == 409
        a_plan(apps, "service")
        rollback = hand_over(streaming, 0, "monolith")["last_handover"]["hold_seconds"]
        traffic.wait_for(20)
        traffic.wait_until_on(people, "monolith")
    print(f"\n{pair.backend}: cut-over held {cut_over:.3f}s, rollback {rollback:.3f}s")
    assert not traffic.unexpected, traffic.unexpected[:3]
    assert all(customer.side == "monolith" for customer in people)
    assert set(traffic.accepted.values()) == {"monolith", "service"}
    settled(streaming)
    assert set(where_invoices_are(pair, list(traffic.accepted)).values()) == {(1, 1)}
    assert fresh_verdict(streaming)["clean"]
    same_rows(pair)
    held = [seconds for seconds in traffic.held.values()]
    print(f"\n{pair.backend}: longest client wait on a moving slot {max(held, default=0):.3f}s")


def signed_post(mover: Flask, path: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    signature = Keyring.parse(FAST["INTERNAL_KEYS"]).sign("POST", path, raw)
    return mover.test_client().post(
        path, data=raw, headers={"Content-Type": "application/json", **signature}
    )


def test_the_ownership_command_is_signed_validated_and_waits_for_the_backfill(
    mover: Flask,
) -> None:
    path = "/moves/billing/ownership"
    body = {"service_buckets": 30, "plans": "monolith"}
    assert mover.test_client().post(path, json=body).status_code == 401
    assert (
        signed_post(mover, path, {"service_buckets": 101, "plans": "monolith"}).status_code == 422
    )
    assert signed_post(mover, path, {"service_buckets": 1, "plans": "nobody"}).status_code == 422
    early = signed_post(mover, path, body)
    assert early.status_code == 409 and early.get_json()["code"] == "move_refused"

    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    accepted = signed_post(mover, path, body)
    assert accepted.status_code == 202, accepted.get_json()
    assert accepted.get_json()["ownership"]["desired"] == 30
    reached = poll(
        lambda: (
            (o := mover.test_client().get("/moves/billing").get_json()["ownership"])["converged"]
            and o
        ),
        timeout=30,
        message="the ownership never converged",
    )
    assert reached["service_buckets"] == 30 and reached["plans"] == "monolith"
    assert set(runner.status()["streams"]) == {"monolith_to_service", "service_to_monolith"}
    assert "strangler_mover_ownership_hold_seconds_count" in mover.test_client().get(
        "/metrics"
    ).get_data(as_text=True)
