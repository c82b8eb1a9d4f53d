"""The users API, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json

from tests.support.api import kinds, ok, register_user
from tests.support.ids import unique_email


def test_a_registered_user_can_be_fetched_and_is_welcomed(client):
    user = register_user(client, name="Grace Hopper")

    fetched = ok(client.get(f"/users/{user['id']}"))

    assert fetched == user
    assert fetched["active"] is True
    assert fetched["created_at"].endswith("+00:00")
    assert kinds(client, user["id"]) == ["welcome"]


def test_emails_are_unique_whatever_their_case(client):
    email = unique_email()
    ok(client.post("/users", json={"email": email, "name": "A"}), 201)

    response = client.post("/users", json={"email": email.upper(), "name": "B"})

    assert response.status_code == 409
    assert response.get_json()["code"] == "email_taken"


def test_bad_input_is_refused_with_field_messages_and_nothing_is_stored(client):
    response = client.post("/users", json={"email": "not-an-email", "name": "", "admin": True})

    body = response.get_json()
    assert response.status_code == 422
    assert body["code"] == "validation_failed"
    assert set(body["fields"]["json"]) == {"email", "name", "admin"}
    assert body["fields"]["json"]["admin"] == ["Unknown field."]
    assert "email" in body["message"]
    assert ok(client.get("/users")) == []


def test_malformed_json_is_a_400_with_the_envelope(client):
    response = client.post("/users", data="{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["code"] == "bad_request"
    assert response.get_json()["request_id"]


def test_an_oversized_body_is_a_413(client):
    # A chunked body without a length is covered against a real server (e2e).
    huge = json.dumps({"email": unique_email(), "name": "x" * 100_000})

    response = client.post("/users", data=huge, content_type="application/json")

    assert response.status_code == 413
    assert response.get_json()["code"] == "body_too_large"
    assert ok(client.get("/users")) == []


def test_unknown_and_malformed_ids_are_404(client):
    assert client.get("/users/6b0f1a3e-0000-4000-8000-000000000000").status_code == 404
    response = client.get("/users/not-a-uuid")
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


def test_users_are_listed_in_pages(client):
    created = [register_user(client)["id"] for _ in range(5)]

    first = client.get("/users?page=1&page_size=2")
    third = client.get("/users?page=3&page_size=2")

    assert [u["id"] for u in first.get_json()] == created[:2]
    assert [u["id"] for u in third.get_json()] == created[4:]
    assert json.loads(first.headers["X-Pagination"])["total"] == 5
    assert client.get("/users?page=0").status_code == 422
    assert client.get("/users?page_size=1000").status_code == 422


def test_a_user_can_be_renamed_and_change_email(client):
    user = register_user(client)
    email = unique_email()

    updated = ok(client.patch(f"/users/{user['id']}", json={"name": "New", "email": email}))

    assert (updated["name"], updated["email"]) == ("New", email)
    assert client.patch(f"/users/{user['id']}", json={}).status_code == 422


def test_changing_to_a_taken_email_is_a_conflict(client):
    first, second = register_user(client), register_user(client)

    response = client.patch(f"/users/{second['id']}", json={"email": first["email"]})

    assert response.status_code == 409


def test_deactivation_happens_once(client):
    user = register_user(client)

    deactivated = ok(client.post(f"/users/{user['id']}/deactivate"))
    again = client.post(f"/users/{user['id']}/deactivate")

    assert deactivated["active"] is False
    assert deactivated["deactivated_at"]
    assert again.status_code == 409
    assert again.get_json()["code"] == "user_inactive"
    assert ok(client.get("/users?active=false"))[0]["id"] == user["id"]
