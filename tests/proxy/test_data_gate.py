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
from strangler_proxy.datagate import DataPolicy, reasons_to_complete, reasons_to_stay
from strangler_proxy.domain import Route
from tests.proxy.conftest import HERE, TOKENS, client_for, set_mode

#: The real clock's now: the in-process proxy's gate reads the real clock too
#: (a fixed date made these tests fail once the verdict aged past the limit).
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
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
        "sides": ["monolith", "service"],
        "streams": {
            "monolith_to_service": {"lag_seconds": 0.05},
            "service_to_monolith": {"lag_seconds": 0.04},
        },
        "ownership": {"service_buckets": 0, "plans": "monolith", "moving": [], "error": None},
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


def test_a_route_that_writes_may_leave_once_the_reverse_stream_is_proved() -> None:
    assert reasons(WRITES, ready()) == []
    not_back = ready(streams={"monolith_to_service": {"lag_seconds": 0.0}})
    assert reasons(WRITES, not_back) == ["the reverse stream (service to monolith) is not running"]
    late = ready(streams={"service_to_monolith": {"lag_seconds": 4.0}})
    assert "is 4.00 s late" in reasons(WRITES, late)[0]
    old_mover = ready(ownership=None)
    assert "cannot hand write ownership" in reasons(WRITES, old_mover)[0]
    assert reasons(READS, old_mover) == []  # a route that only reads needs no handover
    failed = ready(ownership={**ready()["ownership"], "error": "OperationalError: locked"})
    assert "the last handover of billing's records failed" in reasons(WRITES, failed)[0]


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

    mover.state = ready(streams={})
    still = set_mode(client, "billing", "canary", 10)
    assert still.status_code == 409
    assert "reverse stream" in still.json()["message"]

    mover.state = ready()
    moved = set_mode(client, "billing", "canary", 10)
    assert moved.status_code == 200
    routes = {r["name"]: r for r in client.get("/_strangler/routes").json()["routes"]}
    # billing's routes move together: one mode, one percent
    assert (routes["ledger"]["mode"], routes["ledger"]["percent"]) == ("canary", 10)
    assert routes["users"]["mode"] == "monolith"
    history = client.get("/_strangler/routes/ledger/history").json()
    assert "billing's routes move together" in history[0]["reason"]


def test_the_listing_shows_each_routes_data_and_gate(gated) -> None:  # type: ignore[no-untyped-def]
    client, mover = gated
    mover.state = ready(lag_seconds=0.25)

    routes = {r["name"]: r for r in client.get("/_strangler/routes").json()["routes"]}

    assert routes["ledger"]["data_state"]["lag_seconds"] == 0.25
    assert routes["ledger"]["data_state"]["verdict"] == "clean"
    assert routes["ledger"]["gate"] == []
    assert routes["billing"]["gate"] == []
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


# --- the journey's end ---------------------------------------------------------


def test_a_completed_move_keeps_its_routes_on_the_service_only() -> None:
    completed = ready(phase="completed", completed={"at": NOW.isoformat()})

    assert reasons(WRITES, completed, "service") == []
    assert reasons(WRITES, completed, "canary") == [
        "billing's move was completed: its routes stay on the service"
    ]


def test_completion_asks_for_every_route_on_the_service_and_says_how() -> None:
    on_canary = dataclasses.replace(WRITES, mode="canary", percent=50)
    on_service = dataclasses.replace(READS, mode="service", percent=100)

    assert reasons_to_complete("billing", [on_service]) == []
    (reason,) = reasons_to_complete("billing", [on_service, on_canary])
    assert "billing on canary 50%" in reason
    assert "`strangler set billing service --wait 60`" in reason
