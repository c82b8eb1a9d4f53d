"""The monolith's commands: seed and the boundary report."""

from __future__ import annotations

import json

from tests.support.api import ok


def test_seed_fills_the_database_with_demo_data(monolith, client):
    result = monolith.test_cli_runner().invoke(args=["seed", "--users", "20", "--invoices", "150"])

    assert result.exit_code == 0, result.output
    users = client.get("/users?page_size=1")
    invoices = client.get("/billing/invoices?page_size=5&include_total=true")
    assert json.loads(users.headers["X-Pagination"])["total"] == 20
    assert json.loads(invoices.headers["X-Pagination"])["total"] == 150
    assert {i["status"] for i in ok(client.get("/billing/invoices?page_size=100"))} == {
        "paid",
        "open",
        "void",
        "draft",
    }


def test_the_boundary_report_maps_each_module(monolith):
    result = monolith.test_cli_runner().invoke(args=["boundaries", "--json"])

    assert result.exit_code == 0, result.output
    report = {module["name"]: module for module in json.loads(result.output)}
    billing = report["billing"]
    assert "billing_invoices" in billing["tables"]
    assert billing["calls"] == ["users.api", "users.events"]
    assert billing["called_by"] == ["notifications"]
    assert billing["publishes"] == ["InvoiceIssued", "InvoicePaid", "SubscriptionCancelled"]
    assert billing["consumes"] == ["UserDeactivated"]
    assert billing["crossing_foreign_keys"] == []
    assert report["notifications"]["consumes"] == [
        "InvoiceIssued",
        "InvoicePaid",
        "SubscriptionCancelled",
        "UserRegistered",
    ]
    assert report["users"]["calls"] == []


def test_the_boundary_report_reads_as_text(monolith):
    result = monolith.test_cli_runner().invoke(args=["boundaries"])

    assert "billing  (ready to extract)" in result.output
    assert "publishes    InvoiceIssued, InvoicePaid, SubscriptionCancelled" in result.output
