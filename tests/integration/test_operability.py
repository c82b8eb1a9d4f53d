"""Health, readiness, request ids in responses and in every log line, API docs."""

from __future__ import annotations

import logging

from monolith import create_app
from servicekit.logs import RequestIdFilter
from tests.support.api import ok


def test_health_and_readiness(client):
    assert ok(client.get("/health")) == {"status": "ok"}
    assert ok(client.get("/ready")) == {"status": "ready"}


def test_not_ready_when_the_database_cannot_be_reached(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/missing/dir/db.sqlite"})
    client = app.test_client()

    response = client.get("/ready")

    assert client.get("/health").status_code == 200
    assert response.status_code == 503
    assert response.get_json()["code"] == "not_ready"


def test_a_request_id_is_kept_or_made_and_always_returned(client):
    given = client.get("/health", headers={"X-Request-ID": "abc-123"})
    made = client.get("/health")
    hostile = client.get("/health", headers={"X-Request-ID": "bad id with spaces and <html>"})

    assert given.headers["X-Request-ID"] == "abc-123"
    assert len(made.headers["X-Request-ID"]) == 32
    assert hostile.headers["X-Request-ID"] != "bad id with spaces and <html>"


def test_every_log_line_of_a_request_carries_its_id(client, caplog):
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO):
        client.post(
            "/users",
            json={"email": "log@example.com", "name": "Log"},
            headers={"X-Request-ID": "req-42"},
        )

    lines = [r for r in caplog.records if r.name.startswith("monolith")]
    assert lines, "the welcome notification should have logged"
    assert {r.request_id for r in lines} == {"req-42"}


def test_errors_carry_the_request_id(client):
    response = client.get(
        "/users/6b0f1a3e-0000-4000-8000-000000000000", headers={"X-Request-ID": "req-404"}
    )

    assert response.get_json()["request_id"] == "req-404"


def test_the_api_is_documented_and_the_docs_work_offline(client):
    spec = ok(client.get("/api/openapi.json"))
    docs = client.get("/api/docs")
    asset = client.get("/api/docs/assets/swagger-ui-bundle.js")

    assert {"/users", "/billing/invoices/{invoice_id}/payments", "/notifications"} <= set(
        spec["paths"]
    )
    payment = spec["paths"]["/billing/invoices/{invoice_id}/payments"]["post"]
    assert {"201", "404", "409", "422"} <= set(payment["responses"])
    assert docs.status_code == 200 and b"/api/docs/assets/" in docs.data
    assert asset.status_code == 200
