"""The data gate: a route that serves a data move leaves the monolith only
when its data is copied, current and verified — and, until write ownership
can be handed over, only if it never writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from strangler_proxy.bootstrap import Proxy
from strangler_proxy.datagate import DataPolicy, reasons_to_stay
from strangler_proxy.domain import Route
from tests.proxy.conftest import HERE, TOKENS, client_for, set_mode

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
READS = Route("ledger", "/ledger/**", frozenset({"GET"}), "billing-team", "billing", data="billing")
WRITES = dataclasses.replace(READS, name="billing", methods=frozenset({"GET", "POST"}))
POLICY = DataPolicy(max_lag=1.0, verify_max_age=900)


def ready(**changes: Any) -> dict[str, Any]:
    """A move whose data may leave the monolith, with ``changes``."""
    status = {
        "move": "billing",
        "phase": "streaming",
        "rows_copied": 1_000,
        "rows_total": 1_000,
        "lag_seconds": 0.05,
        "backfilled_at": (NOW - dt.timedelta(minutes=5)).isoformat(),
        "verdict": {
            "clean": True,
            "at": (NOW - dt.timedelta(minutes=2)).isoformat(),
            "started_at": (NOW - dt.timedelta(minutes=2, seconds=3)).isoformat(),
            "rows_checked": 1_000,
            "diverged_count": 0,
            "unsettled_count": 0,
            "diverged": [],
            "unsettled": [],
        },
        "error": None,
    }
    status.update(changes)
    return status


def reasons(route: Route, status: dict[str, Any] | None, mode: str = "service") -> list[str]:
    return reasons_to_stay(route, mode, status, POLICY, NOW)


def test_a_read_only_route_with_proved_data_may_leave() -> None:
    assert reasons(READS, ready()) == []
    assert reasons(READS, ready(), mode="canary") == []


def test_staying_or_shadowing_is_never_gated() -> None:
    for mode in ("monolith", "shadow"):
        assert reasons(WRITES, None, mode=mode) == []


def test_a_route_without_data_is_not_gated() -> None:
    assert reasons(dataclasses.replace(WRITES, data=None), None) == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "data mover cannot be reached"),
        (ready(phase="idle"), "`strangler data start billing`"),
        (ready(phase="failed", error="table x: column y"), "table x: column y"),
        (ready(phase="backfill", rows_copied=250), "25% done (250 of 1,000 rows)"),
        (ready(lag_seconds=3.5), "3.50 s late (at most 1 s)"),
        (ready(lag_seconds=None), "nobody is applying"),
        (ready(verdict=None), "not been verified yet: run `strangler data verify billing`"),
        (
            ready(verdict={**ready()["verdict"], "clean": False, "diverged_count": 2}),
            "found 2 diverging rows",
        ),
        (
            ready(backfilled_at=NOW.isoformat()),  # copied again since it was verified
            "older than the current copy",
        ),
        (
            ready(verdict={**ready()["verdict"], "at": (NOW - dt.timedelta(hours=1)).isoformat()}),
            "60 min old",
        ),
    ],
)
def test_each_unready_state_refuses_with_its_reason_and_fix(
    status: dict[str, Any] | None, expected: str
) -> None:
    found = reasons(READS, status)
    assert len(found) == 1
    assert expected in found[0]


def test_a_route_that_writes_stays_until_write_ownership_can_move() -> None:
    found = reasons(WRITES, ready())
    assert len(found) == 1
    assert "accepts writes (POST)" in found[0]
    assert "only shadow" in found[0]


# --- through the admin API -------------------------------------------------------


class FakeMover:
    """Stands in for the data mover's HTTP API (datamoves.DataMoves)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.commands: list[tuple[str, str, dict[str, Any]]] = []

    def status(self, move: str) -> dict[str, Any] | None:
        return None if self.state is None else {**self.state, "move": move}

    def command(self, move: str, verb: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.commands.append((move, verb, body or {}))
        return 200, {**(self.state or {}), "move": move}

    def close(self) -> None:
        pass


@pytest.fixture
def gated(make_proxy: Callable[..., Proxy]) -> Iterator[tuple[Any, FakeMover]]:
    proxy = make_proxy(ROUTES_FILE=str(HERE / "data_routes.toml"))
    mover = FakeMover()
    proxy.data = mover  # type: ignore[assignment]
    with client_for(proxy, TOKENS["admin"]) as client:
        yield client, mover


def test_the_gate_refuses_then_allows_as_the_data_becomes_ready(gated) -> None:  # type: ignore[no-untyped-def]
    client, mover = gated
    mover.state = ready(phase="backfill", rows_copied=400, verdict=None)

    refused = set_mode(client, "ledger", "canary", 10)
    assert refused.status_code == 409
    body = refused.json()
    assert "40% done" in body["message"]
    assert "`strangler data verify billing`" in body["message"]
    assert len(body["fields"]["gate"]) == 2
    assert set_mode(client, "ledger", "shadow").status_code == 200

    mover.state = ready()
    assert set_mode(client, "ledger", "canary", 10).status_code == 200
    still = set_mode(client, "billing", "service")
    assert still.status_code == 409
    assert "accepts writes" in still.json()["message"]


def test_the_listing_shows_each_routes_data_and_gate(gated) -> None:  # type: ignore[no-untyped-def]
    client, mover = gated
    mover.state = ready(lag_seconds=0.25)

    routes = {r["name"]: r for r in client.get("/_strangler/routes").json()["routes"]}

    assert routes["ledger"]["data_state"]["lag_seconds"] == 0.25
    assert routes["ledger"]["data_state"]["verdict"] == "clean"
    assert routes["ledger"]["gate"] == []
    assert routes["billing"]["gate"] and "accepts writes" in routes["billing"]["gate"][0]
    assert routes["users"]["data"] is None and routes["users"]["gate"] == []


def test_data_commands_go_to_the_mover_for_the_owning_team_only(gated) -> None:  # type: ignore[no-untyped-def]
    client, mover = gated
    mover.state = ready()
    owner = {"Authorization": f"Bearer {TOKENS['billing-team']}"}
    other = {"Authorization": f"Bearer {TOKENS['users-team']}"}

    assert client.post("/_strangler/data/billing/start", json={}, headers=owner).status_code == 200
    assert client.post("/_strangler/data/billing/verify", headers=other).status_code == 403
    assert client.post("/_strangler/data/nothing/verify", headers=owner).status_code == 404

    assert mover.commands == [("billing", "start", {"replace": False})]


def test_an_unreachable_mover_is_reported_not_failed(gated) -> None:  # type: ignore[no-untyped-def]
    client, mover = gated
    mover.state = None
    assert client.get("/_strangler/data/billing").status_code == 503
    listing = client.get("/_strangler/data").json()
    assert listing == [{"move": "billing", "phase": "unknown"}]
    assert "cannot be reached" in set_mode(client, "ledger", "service").json()["message"]
