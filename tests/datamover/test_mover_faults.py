"""What a careful reviewer tried to break, kept as tests: a holder that
stalled past its lease, changes that only apply in their order, a schema that
changes under a running move, a verification asked for mid-copy, and the
refusals that must survive a stop."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from datamover.app import create_app, runners_of
from datamover.runner import Refused
from datamover.state import LeaseHeld, StateStore
from tests.datamover.support import (
    FAST,
    Pair,
    caught_up,
    fresh_verdict,
    rows_of,
    same_rows,
    wait_for_phase,
)
from tests.datamover.test_mover import a_row_id, raw_sql
from tests.support.processes import poll


def test_a_holder_whose_lease_was_taken_writes_nothing_more(pair: Pair, mover: Flask) -> None:
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    # Another mover took the lease while this one was stalled.
    raw_sql(pair.target, "UPDATE strangler_moves SET holder = 'intruder', lease_until = 4102444800")
    invoice = a_row_id(pair.source, "billing_invoices")
    raw_sql(pair.source, f"UPDATE billing_invoices SET currency = 'SEK' WHERE id = '{invoice}'")

    poll(lambda: runner.status()["waiting_for_lease"] == "intruder", timeout=10)
    assert "SEK" not in next(r for r in rows_of(pair.target, "billing_invoices") if r[0] == invoice)

    raw_sql(pair.target, "UPDATE strangler_moves SET holder = NULL, lease_until = NULL")
    poll(
        lambda: (
            "SEK" in next(r for r in rows_of(pair.target, "billing_invoices") if r[0] == invoice)
        ),
        timeout=10,
        message="the change never arrived once the lease was free again",
    )


def test_the_lease_of_a_mover_that_died_on_this_host_is_taken_at_once(
    pair: Pair, mover: Flask
) -> None:
    """A SIGKILLed mover cannot release its lease; its successor on the same
    host sees that the process is gone and does not wait the lease out. A
    live process's lease, or another host's, is waited for."""
    store = runners_of(mover)["billing"].store
    store.acquire("first", 5.0)  # the move's row exists
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its PID names no process now
    alive = subprocess.Popen(["sleep", "30"])
    host = socket.gethostname()
    try:
        for holder, taken in (
            (f"{host}:{dead.pid}:dead01", True),
            (f"{host}:{alive.pid}:live01", False),
            (f"another-host:{dead.pid}:far001", False),
        ):
            raw_sql(
                pair.target,
                f"UPDATE strangler_moves SET holder = '{holder}', lease_until = 4102444800",
            )
            if taken:
                store.acquire("successor", 5.0)
                assert store.load().holder == "successor"
            else:
                with pytest.raises(LeaseHeld):
                    store.acquire("successor", 5.0)
    finally:
        alive.kill()
        alive.wait()


def test_changes_that_only_work_in_their_order_are_applied_not_failed(
    pair: Pair, mover: Flask
) -> None:
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    plan, code = rows_of(pair.source, "billing_plans")[0][:2]
    # One transaction: the old plan gives up its code, a new plan takes it,
    # and the old plan changes again (so its last change comes after the new plan's).
    statements = [
        f"UPDATE billing_plans SET code = code || '-old' WHERE id = '{plan}'",
        "INSERT INTO billing_plans (id, code, name, price_minor, currency, interval, created_at) "
        f"VALUES ('p-new', '{code}', 'New', 100, 'EUR', 'month', '2026-01-01 00:00:00')",
        f"UPDATE billing_plans SET name = 'Renamed' WHERE id = '{plan}'",
    ]
    raw_sql(pair.source, "; ".join(statements) if pair.backend == "postgres" else statements[0])
    if pair.backend == "sqlite":  # the sqlite3 driver runs one statement per call
        for statement in statements[1:]:
            raw_sql(pair.source, statement)

    poll(lambda: caught_up(runner.status()), timeout=15)
    assert runner.status()["phase"] == "streaming"
    assert fresh_verdict(runner)["clean"]


def test_a_column_added_under_a_running_move_stops_it_by_name(pair: Pair, mover: Flask) -> None:
    runner = runners_of(mover)["billing"]
    runner.start()
    wait_for_phase(runner.status, "streaming")
    for url in (pair.source, pair.target):
        raw_sql(url, "ALTER TABLE billing_payments ADD COLUMN note VARCHAR(50)")

    failed = wait_for_phase(runner.status, "failed", timeout=15)

    assert "billing_payments" in failed["error"]
    runner.stop()  # capture comes off even though the schema is not what it was
    with sa.create_engine(pair.source).connect() as connection:
        tables = sa.inspect(connection).get_table_names()
    assert "strangler_changes" not in tables


def test_a_verification_asked_for_mid_copy_is_refused_plainly(pair: Pair) -> None:
    slow = {**FAST, "CHUNK_ROWS": 50, "NICE": 20}
    app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **slow})
    runner = runners_of(app)["billing"]
    try:
        runner.start()
        with pytest.raises(Refused, match="still running"):
            runner.request_verification()
        assert runner.status()["verdict"] is None
    finally:
        runner.close()


def test_stop_then_start_still_refuses_to_replace_the_services_own_rows(
    pair: Pair, mover: Flask
) -> None:
    raw_sql(
        pair.target,
        "INSERT INTO billing_plans (id, code, name, price_minor, currency, interval, created_at) "
        "VALUES ('p-own', 'own', 'Own', 1, 'EUR', 'month', '2026-01-01 00:00:00')",
    )
    runner = runners_of(mover)["billing"]
    with pytest.raises(Refused, match="--replace"):
        runner.start()
    runner.stop()
    with pytest.raises(Refused, match="--replace"):
        runner.start()
    assert "p-own" in [row[0] for row in rows_of(pair.target, "billing_plans")]


def test_a_mover_standing_by_does_not_take_over_a_stopped_move(pair: Pair, mover: Flask) -> None:
    first = runners_of(mover)["billing"]
    first.start()
    wait_for_phase(first.status, "streaming")
    standby_app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **FAST})
    standby = runners_of(standby_app)["billing"]
    try:
        poll(lambda: standby.status()["waiting_for_lease"] == first.holder, timeout=10)
        first.stop()
        poll(lambda: not standby.running, timeout=10, message="the standby ran a stopped move")
        assert standby.status()["phase"] == "stopped"
        first.start()  # not held by the standby
        wait_for_phase(first.status, "streaming")
    finally:
        standby.close()


@pytest.mark.parametrize("templates", ["sqlite"], indirect=True, scope="session")
def test_a_vacuum_of_the_monolith_mid_copy_starts_the_table_over_and_loses_nothing(
    pair: Pair,
) -> None:
    """SQLite copies by rowid ranges, and ``VACUUM`` may renumber rowids: rows
    could then move into ranges already copied. The copy sees the schema cookie
    VACUUM bumps and copies that table again from its start. (SQLite 3.40 keeps
    the rowids of a table with an index, as billing's all have, so the
    renumbering itself cannot be staged here: what is pinned is that a VACUUM
    sends the copy back to the start, and that the copy still ends clean.)"""
    slow = {**FAST, "CHUNK_ROWS": 200, "NICE": 5}
    app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **slow})
    runner = runners_of(app)["billing"]

    def invoices_checkpoint() -> dict[str, int]:
        cursor = runner.store.load().cursor("billing_invoices")
        return cursor if isinstance(cursor, dict) else {"rowid": 0, "schema": -1}

    try:
        runner.start()
        poll(lambda: invoices_checkpoint()["rowid"] >= 600, timeout=60, interval=0.01)
        before = invoices_checkpoint()["schema"]
        raw_sql(
            pair.source,
            "DELETE FROM billing_payments WHERE invoice_id IN "
            "(SELECT id FROM billing_invoices WHERE rowid <= 300)",
        )
        raw_sql(pair.source, "DELETE FROM billing_invoices WHERE rowid <= 300")
        raw_sql(pair.source, "VACUUM")
        # Only a copy begun again from the table's start writes the new version.
        poll(
            lambda: invoices_checkpoint()["schema"] not in (before, -1),
            timeout=30,
            interval=0.01,
            message="the copy carried on after the VACUUM as if the rowids were the same",
        )
        status = wait_for_phase(runner.status, "streaming")
        assert status["rows_copied"] <= status["rows_total"], "the first pass was counted too"
        poll(lambda: caught_up(runner.status()), timeout=20)
        verdict = fresh_verdict(runner)
        assert verdict["clean"], verdict
        same_rows(pair)
    finally:
        runner.close()


def test_a_mover_starting_on_a_busy_sqlite_database_waits_its_turn(tmp_path: Path) -> None:
    """A seed holding SQLite's one write lock while the mover boots made it
    exit ("database is locked"); it now waits, with a log line."""
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE seed (n INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # a writer that holds the lock for a while
    holder.execute("INSERT INTO seed VALUES (1)")
    impatient = sa.create_engine(url, connect_args={"timeout": 0.05})
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        store = StateStore(impatient, "billing")
        assert store.load().name == "billing"
    finally:
        release.join()
        holder.close()
        impatient.dispose()
