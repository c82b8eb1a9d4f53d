"""Real processes on 127.0.0.1: gunicorn serving the monolith, and its relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.databases import migrate
from tests.support.processes import BIN, Process, Server, gunicorn


@pytest.fixture(scope="module")
def monolith_env(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("monolith-e2e")
    url = f"sqlite:///{directory / 'monolith.db'}"
    migrate("monolith", url)
    # Eager delivery off: every notification has to come through the relay
    # process, which is what these tests check.
    return {
        "MONOLITH_DATABASE_URL": url,
        "MONOLITH_RELAY_POLL_SECONDS": "0.1",
        "MONOLITH_EVENTS_DELIVER_EAGERLY": "false",
    }


@pytest.fixture(scope="module")
def monolith_server(monolith_env, tmp_path_factory) -> Iterator[Server]:
    server = gunicorn(
        "monolith", "monolith.wsgi:app", monolith_env, tmp_path_factory.mktemp("logs"), workers=2
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def monolith_relay(monolith_env, tmp_path_factory) -> Iterator[Process]:
    relay = Process(
        "monolith-relay",
        [str(BIN / "flask"), "--app", "monolith.wsgi", "events", "relay"],
        monolith_env,
        tmp_path_factory.mktemp("relay-logs"),
    )
    yield relay
    relay.stop()
