"""Routes whose records move (``data``) are sent to the side that owns the
records a request acts on — by the acting user's bucket, or the table's owner
for records of no user — whatever the route's mode; a write to a user being
handed over waits (503 + Retry-After); a side that refuses records it does
not own (409 ``not_owner``) makes the proxy ask the other side, once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from servicekit.buckets import bucket
from servicekit.db import utcnow
from strangler_proxy.bootstrap import Proxy
from strangler_proxy.domain import TABLE_SLOT, Ownership, Route, desired_ownership, owner_of
from tests.proxy.conftest import HERE, client_for
from tests.support.processes import free_port, poll

LEDGER = Route("ledger", "/ledger/**", frozenset({"GET", "POST"}), "t", "billing", data="billing")


def users_on(side: str, service_buckets: int, count: int = 3) -> list[str]:
    """User ids whose bucket puts them on ``side`` when the service owns ``service_buckets``."""
    found = []
    for n in range(10_000):
        user = f"user-{n}"
        if (bucket("billing", user) < service_buckets) == (side == "service"):
            found.append(user)
            if len(found) == count:
                return found
    raise AssertionError("no such users")


def test_owners_by_bucket_and_the_table_owner_for_records_of_no_user() -> None:
    half = Ownership(service_buckets=50)
    for user in users_on("service", 50):
        assert owner_of(LEDGER, user, "POST", half) == "billing"
    for user in users_on("monolith", 50):
        assert owner_of(LEDGER, user, "GET", half) == "monolith"
    assert owner_of(LEDGER, None, "POST", half) == "monolith"
    assert owner_of(LEDGER, None, "POST", Ownership(100, plans_on_service=True)) == "billing"


def test_a_moving_users_writes_wait_and_reads_stay_with_the_old_owner() -> None:
    user = users_on("monolith", 50, 1)[0]
    moving = Ownership(service_buckets=0, moving=frozenset({bucket("billing", user)}))
    assert owner_of(LEDGER, user, "POST", moving) is None
    assert owner_of(LEDGER, user, "GET", moving) == "monolith"
    other = users_on("monolith", 0, 50)
    held = [u for u in other if owner_of(LEDGER, u, "POST", moving) is None]
    assert held == [user]  # nobody else is held
    assert owner_of(LEDGER, None, "POST", moving) == "monolith"
    assert TABLE_SLOT not in moving.moving


def test_without_a_word_from_the_mover_the_mode_decides() -> None:
    canary = dataclasses.replace(LEDGER, mode="canary", percent=50)
    user = users_on("service", 50, 1)[0]
    assert owner_of(canary, user, "GET", None) == "billing"
    assert owner_of(canary, None, "GET", None) == "monolith"
    assert owner_of(dataclasses.replace(LEDGER, mode="service"), None, "GET", None) == "billing"


def test_what_each_mode_asks_of_the_mover() -> None:
    assert desired_ownership(dataclasses.replace(LEDGER, mode="canary", percent=25)) == (
        25,
        "monolith",
    )
    assert desired_ownership(dataclasses.replace(LEDGER, mode="service", percent=100)) == (
        100,
        "service",
    )
    assert desired_ownership(dataclasses.replace(LEDGER, mode="shadow")) == (0, "monolith")


# --- through the data plane ------------------------------------------------------


class Mover:
    """The data mover as the proxy's control loop asks it (datamoves.DataMoves)."""

    def __init__(self) -> None:
        self.ownership: dict[str, Any] | None = None
        self.asked: list[dict[str, Any]] = []

    def status(self, move: str) -> dict[str, Any] | None:
        if self.ownership is None:
            return None
        return {"move": move, "phase": "streaming", "ownership": self.ownership}

    def command(self, move: str, verb: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.asked.append(body)
        self.ownership = {
            **(self.ownership or {}),
            "desired": body["service_buckets"],
            "desired_plans": body["plans"],
        }
        return 202, {}

    def close(self) -> None:
        pass


@pytest.fixture
def owned(make_proxy: Callable[..., Proxy]) -> Iterator[tuple[Proxy, Any, Mover]]:
    proxy = make_proxy(ROUTES_FILE=str(HERE / "data_routes.toml"))
    mover = Mover()
    proxy.control.data = mover  # type: ignore[assignment]
    with client_for(proxy) as client:
        yield proxy, client, mover


def owns(proxy: Proxy, mover: Mover, ownership: dict[str, Any]) -> None:
    """Make the mover report ``ownership`` and wait until the proxy routes by it."""
    mover.ownership = {"moving": [], "plans": "monolith", **ownership}
    expected = Ownership.from_status({"ownership": mover.ownership})
    poll(lambda: proxy.owners.by_move.get("billing") == expected, timeout=5)


def upstream_of(response: Any) -> str:
    assert response.status_code == 200, response.text
    return response.json()["upstream"]  # type: ignore[no-any-return]


def test_each_request_goes_to_the_owner_of_its_users_records(owned) -> None:  # type: ignore[no-untyped-def]
    proxy, client, mover = owned
    owns(proxy, mover, {"service_buckets": 50})
    for user in users_on("service", 50):
        assert upstream_of(client.get("/ledger/x", headers={"X-User-ID": user})) == "billing"
    for user in users_on("monolith", 50):
        assert upstream_of(client.get("/ledger/x", headers={"X-User-ID": user})) == "monolith"
    assert upstream_of(client.get("/ledger/x")) == "monolith"  # no user: the table's owner


def test_a_write_of_a_user_being_handed_over_gets_503_and_retry_after(owned) -> None:  # type: ignore[no-untyped-def]
    proxy, client, mover = owned
    user = users_on("monolith", 50, 1)[0]
    owns(proxy, mover, {"service_buckets": 0, "moving": [bucket("billing", user)]})

    held = client.post("/billing/x", json={}, headers={"X-User-ID": user})

    assert held.status_code == 503
    assert held.headers["Retry-After"] == "1"
    assert "being handed over" in held.json()["message"]
    assert upstream_of(client.get("/billing/x", headers={"X-User-ID": user})) == "monolith"


def test_a_stale_view_is_corrected_by_the_side_that_does_not_own(owned) -> None:  # type: ignore[no-untyped-def]
    proxy, client, mover = owned
    user = users_on("monolith", 50, 1)[0]
    owns(proxy, mover, {"service_buckets": 0})  # stale: the service owns it now

    answer = client.get("/ledger/mine-on-billing", headers={"X-User-ID": user})

    assert upstream_of(answer) == "billing"


def test_a_409_that_is_not_about_ownership_is_passed_on_whole(owned) -> None:  # type: ignore[no-untyped-def]
    proxy, client, mover = owned
    owns(proxy, mover, {"service_buckets": 0})
    answer = client.get("/ledger/conflict")
    assert answer.status_code == 409
    assert answer.json() == {"status": 409, "code": "conflict", "upstream": "monolith"}


def test_the_routes_mode_is_asked_of_the_mover_until_it_holds(owned) -> None:  # type: ignore[no-untyped-def]
    proxy, client, mover = owned
    owns(proxy, mover, {"service_buckets": 0, "desired": 0, "desired_plans": "monolith"})
    admin = {"Authorization": "Bearer admin-secret"}
    revision = client.get("/_strangler/routes/billing", headers=admin).json()["revision"]
    proxy.data = FakeGate()  # type: ignore[assignment]  # the admin API's gate: data ready

    moved = client.patch(
        "/_strangler/routes/billing",
        headers=admin,
        json={"mode": "canary", "percent": 30, "reason": "first users", "revision": revision},
    )

    assert moved.status_code == 200, moved.text
    poll(lambda: mover.asked, timeout=5, message="the mover was never asked")
    assert mover.asked[-1] == {"service_buckets": 30, "plans": "monolith"}


class FakeGate:
    """A data mover whose data is ready (for the admin API's gate)."""

    def status(self, move: str) -> dict[str, Any]:
        from tests.proxy.test_data_gate import ready

        return {**ready(), "verdict": {**ready()["verdict"], "at": utcnow().isoformat()}}

    def close(self) -> None:
        pass


def test_a_data_route_whose_service_is_down_says_try_again_never_not_owner(
    make_proxy: Callable[..., Proxy],
) -> None:
    """No fallback to the monolith for records the service owns: the monolith
    would refuse them (409 not_owner); the client must hear "try again"."""
    proxy = make_proxy(
        ROUTES_FILE=str(HERE / "data_routes.toml"), BILLING_URL=f"http://127.0.0.1:{free_port()}"
    )
    mover = Mover()
    proxy.control.data = mover  # type: ignore[assignment]
    with client_for(proxy) as client:
        owns(proxy, mover, {"service_buckets": 100, "plans": "service"})
        user = users_on("service", 100, 1)[0]

        answer = client.get("/ledger/x", headers={"X-User-ID": user})

        assert answer.status_code == 502, answer.text
        assert answer.json()["code"] == "bad_gateway"
