"""Routes whose records move (``data``) are sent to the side that owns the
records a request acts on — by the acting user's bucket, or the table's owner
for records of no user — whatever the route's mode; a request for records
being handed over goes to their new owner and is held while it answers 503
``ownership_moving`` (at most ``FENCE_HOLD``, then the 503 is passed on); a
side that refuses records it does not own (409 ``not_owner``) makes the proxy
ask the other side, once."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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
        assert owner_of(LEDGER, user, half) == "billing"
    for user in users_on("monolith", 50):
        assert owner_of(LEDGER, user, half) == "monolith"
    assert owner_of(LEDGER, None, half) == "monolith"
    assert owner_of(LEDGER, None, Ownership(100, plans_on_service=True)) == "billing"


def test_records_being_handed_over_go_to_their_new_owner_and_nobody_elses() -> None:
    user = users_on("monolith", 50, 1)[0]
    slot = bucket("billing", user)
    heading = Ownership(service_buckets=slot + 1)
    moving = Ownership(service_buckets=slot, moving=frozenset({slot}), heading=heading)
    assert owner_of(LEDGER, user, moving) == "billing"
    others = [u for u in users_on("monolith", 0, 200) if bucket("billing", u) != slot]
    assert {owner_of(LEDGER, u, moving) for u in others} == {
        "billing" if bucket("billing", u) < slot else "monolith" for u in others
    }
    assert owner_of(LEDGER, None, moving) == "monolith"
    # Not knowing where they go, the old owner is asked (and says "moving" too).
    unknown = dataclasses.replace(moving, heading=None)
    assert owner_of(LEDGER, user, unknown) == "monolith"


def test_the_mover_s_status_says_where_the_records_are_heading() -> None:
    status = {
        "ownership": {
            "service_buckets": 10,
            "plans": "monolith",
            "moving": list(range(10, 50)),
            "desired": 50,
            "desired_plans": "monolith",
        }
    }
    ownership = Ownership.from_status(status)
    assert ownership is not None
    assert ownership.heading == Ownership(service_buckets=50)
    assert ownership.on_service(30) and ownership.on_service(5) and not ownership.on_service(60)
    assert not ownership.on_service(TABLE_SLOT)


def test_without_a_word_from_the_mover_the_mode_decides() -> None:
    canary = dataclasses.replace(LEDGER, mode="canary", percent=50)
    user = users_on("service", 50, 1)[0]
    assert owner_of(canary, user, None) == "billing"
    assert owner_of(canary, None, None) == "monolith"
    assert owner_of(dataclasses.replace(LEDGER, mode="service"), None, None) == "billing"


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


def moving_back_to_the_monolith(proxy: Proxy, mover: Mover) -> str:
    """A user whose bucket the service is handing back (the route's mode,
    monolith, asks for that too: the control loop leaves the goal alone)."""
    user = users_on("monolith", 50, 1)[0]
    slot = bucket("billing", user)
    owns(
        proxy,
        mover,
        {
            "service_buckets": slot + 1,
            "moving": list(range(slot + 1)),
            "desired": 0,
            "desired_plans": "monolith",
        },
    )
    return user


def test_a_request_for_records_being_handed_over_is_held_until_the_new_owner_takes_it(
    owned: Any, tmp_path: Path
) -> None:
    proxy, client, mover = owned
    user = moving_back_to_the_monolith(proxy, mover)
    handover = tmp_path / "handover"
    handover.touch()
    asked = tmp_path / "handover.asked"
    answers: list[httpx.Response] = []
    writer = threading.Thread(
        target=lambda: answers.append(
            client.post(
                "/billing/moving", params={"handover": str(handover)}, headers={"X-User-ID": user}
            )
        )
    )
    writer.start()
    poll(
        lambda: asked.exists() and len(asked.read_text().split()) >= 2,
        timeout=5,
        message="the proxy did not ask the new owner again",
    )
    handover.unlink()  # the handover is done: the new owner takes the write
    writer.join(timeout=10)

    assert upstream_of(answers[0]) == "monolith"
    assert set(asked.read_text().split()) == {"monolith"}  # never the old owner
    timing = answers[0].headers["Server-Timing"]
    assert timing.startswith("fence;dur=") and float(timing.split("=")[1]) > 0


def test_a_handover_longer_than_the_hold_passes_the_503_on(
    make_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    proxy = make_proxy(ROUTES_FILE=str(HERE / "data_routes.toml"), FENCE_HOLD=0.2)
    mover = Mover()
    proxy.control.data = mover  # type: ignore[assignment]
    handover = tmp_path / "handover"
    handover.touch()
    with client_for(proxy) as client:
        user = moving_back_to_the_monolith(proxy, mover)

        answer = client.post(
            "/billing/moving", params={"handover": str(handover)}, headers={"X-User-ID": user}
        )

    assert answer.status_code == 503
    assert answer.json()["code"] == "ownership_moving"
    assert len((tmp_path / "handover.asked").read_text().split()) > 1  # held, asked again


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
