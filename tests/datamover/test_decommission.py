"""Issue 8's decommission, as an operator does it: `strangler data complete
billing` is refused with the reason and the command that fixes it until the
routes are on the service, the service owns every record and a clean
verification followed the handover; then it stops the sync, archives the
monolith's billing tables, and the monolith runs on without them — users and
notifications served, billing answering 410, a deactivated user's
subscriptions cancelled by the service — while the proxy keeps billing on the
service and refuses to move it back. Real processes, SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from demo.loadgen import a_plan
from tests.conftest import BACKENDS
from tests.datamover.support import BILLING_TABLES
from tests.datamover.test_data_moves_with_the_route import (
    _admin,
    a_user_with_an_invoice,
    strangler,
)
from tests.datamover.test_journey import converged_at
from tests.extracted.deployment import Deployment, answered, created, kinds_of, moving_data
from tests.support.ids import unique
from tests.support.processes import poll

pytestmark = pytest.mark.e2e

#: Every billing table leaves the monolith: the moved ones and billing's own bookkeeping.
ARCHIVED_TABLES = (
    *BILLING_TABLES,
    "billing_outbox",
    "billing_processed_events",
    "billing_ownership",
)


@pytest.fixture(params=BACKENDS)
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    with moving_data(request.param, tmp_path, lease_seconds=2) as deployment:
        yield deployment


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """The command failed, and said each of ``words``."""
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    for word in words:
        assert word in said, (word, said)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_complete_ends_the_journey_and_the_monolith_runs_without_billing(
    system: Deployment,
) -> None:
    proxy = httpx.Client(base_url=system.proxy_url, timeout=10)
    monolith = httpx.Client(base_url=system.monolith_url, timeout=10)
    plan = a_plan(proxy)
    before = a_user_with_an_invoice(proxy, plan)

    # Nothing copied yet: refused, and told how to begin.
    refused(strangler(system, "data", "complete", "billing"), "strangler set billing-")
    assert succeeded(strangler(system, "data", "start", "billing", "--wait"))
    succeeded(strangler(system, "data", "verify", "billing"))
    # The routes still on the monolith: refused, with the command that moves them.
    refused(strangler(system, "data", "complete", "billing"), "strangler set billing-")

    succeeded(
        strangler(system, "set", "billing-invoices", "service", "-r", "cut-over", "--wait", "30")
    )
    poll(lambda: converged_at(system, 100), timeout=60, message="the cut-over never converged")
    # The last clean verification is from before the handover: prove the copy as it is.
    refused(strangler(system, "data", "complete", "billing"), "strangler data verify billing")

    after_cut_over = a_user_with_an_invoice(proxy, plan)  # written on the service, streamed back
    succeeded(strangler(system, "data", "verify", "billing"))
    shown = succeeded(strangler(system, "data", "complete", "billing"))
    assert "completed" in shown and "archived" in shown, shown

    # The monolith's billing tables are archived, not dropped; the rest is there.
    present = tables(system.monolith_db)
    assert not present & set(ARCHIVED_TABLES), present
    assert {f"archived_{name}" for name in ARCHIVED_TABLES} <= present
    assert {"users_accounts", "notifications_messages"} <= present
    with _admin(system) as admin:
        status = answered(admin.get("/data/billing"))
    assert status["phase"] == "completed" and status["completed"]["archived_at"]
    assert "completed" in succeeded(strangler(system, "data", "status"))
    # Asked again: nothing more to do.
    succeeded(strangler(system, "data", "complete", "billing"))

    # The monolith runs on: ready, users served, billing gone for good (410, JSON).
    assert monolith.get("/ready").status_code == 200
    answered(monolith.get(f"/users/{before['user']['id']}"))
    for request in (
        monolith.get("/billing/invoices"),
        monolith.get(f"/billing/invoices/{before['invoice']['id']}", headers=before["acting"]),
        monolith.post("/billing/plans", json={"code": unique("p")}),
    ):
        assert request.status_code == 410, request.text
        assert request.json()["code"] == "decommissioned"

    # Through the proxy, billing is the service's: old and new records, new writes,
    # and a payment retried with its key replays the stored answer.
    for customer in (before, after_cut_over):
        invoice = answered(
            proxy.get(f"/billing/invoices/{customer['invoice']['id']}", headers=customer["acting"])
        )
        assert invoice["amount_paid_minor"] == customer["invoice"]["amount_minor"]
    replay = proxy.post(
        f"/billing/invoices/{before['invoice']['id']}/payments",
        json=before["body"],
        headers={**before["acting"], "Idempotency-Key": before["key"]},
    )
    assert replay.status_code == 201 and replay.json() == before["payment"], replay.text
    created(
        proxy.post(
            "/billing/invoices",
            json={"subscription_id": before["subscription"]["id"]},
            headers=before["acting"],
        )
    )

    # Never back to the monolith: not by a person, and not by the dashboard.
    refused(
        strangler(system, "set", "billing-invoices", "monolith", "-r", "back?"),
        "completed",
    )
    refused(
        strangler(system, "set", "billing-plans", "canary", "10", "-r", "back?"),
        "completed",
    )

    # Users' deactivation cancels the subscriptions where billing is now: the service.
    answered(proxy.post(f"/users/{before['user']['id']}/deactivate"))
    poll(
        lambda: (
            proxy.get(
                f"/billing/subscriptions/{before['subscription']['id']}", headers=before["acting"]
            ).json()["status"]
            == "cancelled"
        ),
        timeout=30,
        message="the service never cancelled the deactivated user's subscription",
    )
    poll(
        lambda: kinds_of(monolith, before["user"]["id"]).count("subscription_cancelled") == 1,
        timeout=30,
        message=f"notifications: {kinds_of(monolith, before['user']['id'])}",
    )

    # And it starts again without them.
    system.processes["monolith"].kill()
    system.start_monolith()
    assert monolith.get("/ready").status_code == 200
    assert monolith.get("/billing/plans").status_code == 410
