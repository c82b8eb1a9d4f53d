"""The mover against real databases (SQLite and PostgreSQL), in process:
backfill under writes, capture of changes made outside any app, verification
that finds planted faults, and the refusals that keep a copy from going wrong."""

from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from datamover.app import create_app, runners_of
from datamover.runner import Refused
from datamover.state import LeaseHeld
from tests.datamover.support import (
    FAST,
    Pair,
    Writer,
    caught_up,
    fresh_verdict,
    rows_of,
    same_rows,
    wait_for_phase,
)
from tests.support.processes import poll


def raw_sql(url: str, statement: str) -> None:
    """Run one statement the way an operator would: the driver, no SQLAlchemy, no app."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(sa.engine.make_url(url).database, isolation_level=None)
        connection.execute(statement)
        connection.close()
    else:
        plain = sa.engine.make_url(url).set(drivername="postgresql")
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute(statement)


def a_row_id(url: str, table: str) -> str:
    return str(rows_of(url, table)[len(rows_of(url, table)) // 2][0])


def test_backfill_under_concurrent_writes_converges_and_verifies_clean(pair: Pair) -> None:
    # Smaller, paced chunks: the writer must have time to write during the copy
    # (SQLite's copy by rowid ranges finished FAST's chunks before it had).
    paced = {**FAST, "CHUNK_ROWS": 50, "NICE": 1}
    mover = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **paced})
    runner = runners_of(mover)["billing"]
    try:
        with Writer(pair.source, limit=2_000, seconds=20) as writer:
            runner.start()
            wait_for_phase(runner.status, "streaming")
            written_during_backfill = writer.done
            poll(lambda: writer.done >= written_during_backfill + 100, timeout=20)
        assert written_during_backfill > 50, "the writer must overlap the backfill"
        poll(lambda: caught_up(runner.status()), timeout=20)
        verdict = fresh_verdict(runner)
        assert verdict["clean"], verdict
        counts = same_rows(pair)  # read plainly, independent of the verifier
        assert verdict["rows_checked"] == sum(counts.values())
        assert counts["billing_invoices"] > 1_500
        assert counts["billing_idempotency_keys"] >= 20
        # Copied rows never pass through the service's code: nothing to publish.
        assert rows_of(pair.target, "billing_outbox") == []
    finally:
        runner.close()


def test_an_operator_update_outside_the_app_reaches_the_service(pair: Pair, mover: Flask) -> None:
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    invoice = a_row_id(pair.source, "billing_invoices")
    raw_sql(pair.source, f"UPDATE billing_invoices SET currency = 'GBP' WHERE id = '{invoice}'")
    raw_sql(pair.source, "DELETE FROM billing_idempotency_keys WHERE key = 'seed-3'")

    def arrived() -> bool:
        rows = {row[0]: row for row in rows_of(pair.target, "billing_invoices")}
        keys = [row[1] for row in rows_of(pair.target, "billing_idempotency_keys")]
        return "GBP" in rows[invoice] and "seed-3" not in keys

    poll(arrived, timeout=10, message="the operator's change never reached the service")
    assert fresh_verdict(runner)["clean"]


def test_a_handover_waiting_for_the_streams_does_not_wait_for_the_idle_poll(pair: Pair) -> None:
    """An idle loop sleeps POLL_SECONDS between turns (bigger batches, fewer
    commits beside the monolith's); a fence waiting to hand users over wakes it."""
    app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **FAST})
    runner = runners_of(app)["billing"]
    try:
        runner.start()
        wait_for_phase(runner.status, "streaming")
        runner.tuning.poll = 60.0  # from the next idle pause on
        poll(lambda: runner.wait_for_capture(time.time(), timeout=1), timeout=10)  # idle now
        invoice = a_row_id(pair.source, "billing_invoices")
        raw_sql(pair.source, f"UPDATE billing_invoices SET currency = 'GBP' WHERE id = '{invoice}'")

        assert runner.wait_for_capture(time.time(), timeout=5), "the fence waited for the poll"
        assert "GBP" in {row[0]: row for row in rows_of(pair.target, "billing_invoices")}[invoice]
    finally:
        runner.close()


def test_verify_finds_each_planted_difference_with_its_key_and_both_values(
    pair: Pair, mover: Flask
) -> None:
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    assert fresh_verdict(runner)["clean"]
    changed = a_row_id(pair.source, "billing_invoices")
    missing = a_row_id(pair.source, "billing_payments")
    raw_sql(
        pair.target,
        f"UPDATE billing_invoices SET amount_minor = amount_minor + 1 WHERE id = '{changed}'",
    )
    raw_sql(pair.target, f"DELETE FROM billing_payments WHERE id = '{missing}'")
    raw_sql(
        pair.target,
        "INSERT INTO billing_idempotency_keys (scope, key, fingerprint, state, reserved_at) "
        "VALUES ('billing.payments', 'planted', 'x', 'completed', '2026-01-01 00:00:00')",
    )

    verdict = fresh_verdict(runner)

    assert not verdict["clean"]
    found = {(row["table"], row["key"]): row for row in verdict["diverged"]}
    assert set(found) == {
        ("billing_invoices", changed),
        ("billing_payments", missing),
        ("billing_idempotency_keys", "billing.payments/planted"),
    }
    row = found[("billing_invoices", changed)]
    assert row["side"] == "different values"
    assert row["service"]["amount_minor"] == row["monolith"]["amount_minor"] + 1
    assert found[("billing_payments", missing)]["side"] == "only in the monolith"
    assert found[("billing_payments", missing)]["service"] is None
    assert found[("billing_idempotency_keys", "billing.payments/planted")]["side"] == (
        "only in the service"
    )


def test_a_column_missing_on_one_side_stops_the_mover_naming_it(pair: Pair, mover: Flask) -> None:
    raw_sql(pair.target, "ALTER TABLE billing_payments DROP COLUMN currency")
    runner = runners_of(mover)["billing"]

    with pytest.raises(Refused, match="billing_payments: column currency exists in the monolith"):
        runner.start()

    status = runner.status()
    assert status["phase"] == "failed"
    assert "billing_payments" in status["error"]
    assert rows_of(pair.target, "billing_invoices") == []  # nothing was half copied


def test_a_second_mover_on_the_same_pair_refuses_and_says_who_holds_it(
    pair: Pair, mover: Flask
) -> None:
    first = runners_of(mover)["billing"]
    first.start()
    second_app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **FAST})
    second = runners_of(second_app)["billing"]
    try:
        with pytest.raises(LeaseHeld, match=first.holder):
            second.start()
        with pytest.raises(LeaseHeld):
            second.stop()
        assert first.running
    finally:
        second.close()


def test_a_service_database_with_rows_of_its_own_is_not_overwritten_silently(
    pair: Pair, mover: Flask
) -> None:
    raw_sql(
        pair.target,
        "INSERT INTO billing_plans (id, code, name, price_minor, currency, interval, created_at) "
        "VALUES ('p-own', 'own', 'Own', 1, 'EUR', 'month', '2026-01-01 00:00:00')",
    )
    runner = runners_of(mover)["billing"]

    with pytest.raises(Refused, match=r"billing_plans 1.*--replace"):
        runner.start()
    assert runner.status()["phase"] == "idle"

    runner.start(replace=True)
    wait_for_phase(runner.status, "streaming")
    assert fresh_verdict(runner)["clean"]
    assert "p-own" not in [row[0] for row in rows_of(pair.target, "billing_plans")]


def test_stop_removes_capture_and_a_restart_copies_what_changed_meanwhile(
    pair: Pair, mover: Flask
) -> None:
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    runner.stop()
    invoice = a_row_id(pair.source, "billing_invoices")
    raw_sql(pair.source, f"UPDATE billing_invoices SET currency = 'CHF' WHERE id = '{invoice}'")
    assert runner.status()["phase"] == "stopped"

    runner.start()
    wait_for_phase(runner.status, "streaming")

    assert fresh_verdict(runner)["clean"]
    same_rows(pair)


# An outage is simulated by terminating PostgreSQL's sessions: PostgreSQL only.
@pytest.mark.parametrize("templates", ["postgres"], indirect=True, scope="session")
def test_a_database_outage_is_waited_out_not_failed(pair: Pair, mover: Flask) -> None:
    runner = runners_of(mover)["billing"]
    with Writer(pair.source, limit=1_500, seconds=20) as writer:
        runner.start()
        for _ in range(3):  # the mover's sessions on both databases die under it
            poll(lambda: runner.status()["rows_copied"] > 0, timeout=20)
            for url in (pair.source, pair.target):
                terminate_sessions_other_than_mine(url)
        wait_for_phase(runner.status, "streaming", timeout=60)
        poll(lambda: writer.done > 300, timeout=20)
    poll(lambda: caught_up(runner.status()), timeout=30)
    assert runner.status()["error"] is None
    assert fresh_verdict(runner)["clean"]
    same_rows(pair)


def terminate_sessions_other_than_mine(url: str) -> None:
    name = sa.engine.make_url(url).database
    raw_sql(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
    )
