"""Fixtures for the billing service and the monolith around it, in process.

``billing_service``: the service app on its own migrated SQLite database,
with ``users`` — a stand-in for the monolith's users API — unless a test
points it at a real (or a dead) one. Real processes live in deployment.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from extracted.billing_service import create_app as create_billing_service
from extracted.billing_service.app import system_of
from extracted.billing_service.billing import orm
from extracted.billing_service.users import User
from servicekit.errors import DependencyUnavailable
from servicekit.ids import new_id
from servicekit.signing import Keyring
from tests.extracted.deployment import TEST_KEYS
from tests.support.databases import empty_tables, migrate
from tests.support.processes import free_port


class StandInUsers:
    """The users API as billing sees it, for tests that are not about HTTP."""

    def __init__(self) -> None:
        self.known: dict[str, User] = {}
        self.down = False

    def add(self, *, active: bool = True) -> str:
        user_id = new_id()
        self.known[user_id] = User(
            id=user_id, email=f"{user_id}@example.com", name="Ada", active=active
        )
        return user_id

    def find_user(self, user_id: str) -> User | None:
        if self.down:
            raise DependencyUnavailable("users cannot be asked right now")
        return self.known.get(user_id)


@pytest.fixture(scope="session")
def billing_service_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('billing-service') / 'billing_service.db'}"
    migrate("billing_service", url)
    return url


@pytest.fixture
def users() -> StandInUsers:
    return StandInUsers()


@pytest.fixture
def billing_service_config(billing_service_database: str) -> dict[str, Any]:
    return {
        "DATABASE_URL": billing_service_database,
        "TESTING": True,
        "INTERNAL_KEYS": TEST_KEYS,
        # Nobody listens there: deliveries fail unless a test says otherwise.
        "EVENTS_URL": f"http://127.0.0.1:{free_port()}",
    }


@pytest.fixture
def billing_service(billing_service_config: dict[str, Any], users: StandInUsers) -> Iterator[Flask]:
    app = create_billing_service(billing_service_config, users=users)
    yield app
    engine = system_of(app).engine
    empty_tables(engine, [orm.metadata])
    engine.dispose()


@pytest.fixture
def service_client(billing_service: Flask) -> FlaskClient:
    return billing_service.test_client()


def post_signed(
    client: FlaskClient, path: str, body: dict[str, Any], *, keys: str = TEST_KEYS, **headers: str
) -> Any:
    """POST ``body`` signed the way the relays sign it."""
    raw = json.dumps(body).encode()
    signature = Keyring.parse(keys).sign("POST", path, raw)
    return client.post(
        path,
        data=raw,
        headers={"Content-Type": "application/json", **signature, **headers},
    )
