"""The load generator times the fence's holds as a client sees them: from the
first attempt the fence held to the answer that ended the hold; a cut
connection after it ends the fence's part (what follows is another wait)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from demo import loadgen
from demo.loadgen import Shopper

#: A shopper waits a quarter of Retry-After: one second of the fake clock.
MOVING = httpx.Response(503, json={"code": "ownership_moving"}, headers={"Retry-After": "4"})
HELD = httpx.Response(201, json={}, headers={"Server-Timing": "fence;dur=42.0"})
PLAIN = httpx.Response(201, json={})
CUT = object()  # the connection breaks


class FakeTime:
    """The shopper's clock: requests take no time, sleeps move it on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(loadgen, "time", fake)
    return fake


def shopper_answering(*answers: object) -> Shopper:
    """A shopper whose requests get ``answers``, in order."""
    queue: Iterator[object] = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(queue)
        if answer is CUT:
            raise httpx.ReadError("cut", request=request)
        assert isinstance(answer, httpx.Response)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    shopper = Shopper("http://proxy.test", {}, threading.Event())
    shopper.client = httpx.Client(
        base_url="http://proxy.test", transport=httpx.MockTransport(handler)
    )
    return shopper


def test_an_answer_nobody_held_is_no_hold() -> None:
    shopper = shopper_answering(PLAIN)
    assert shopper.call("POST", "/billing/invoices").status_code == 201
    assert shopper.holds == []


def test_a_request_the_proxy_held_is_one_hold() -> None:
    shopper = shopper_answering(HELD)
    shopper.call("POST", "/billing/invoices")
    assert [seconds for _, seconds in shopper.holds] == [0.0]  # its time is the proxy's


def test_fenced_answers_then_an_accepted_one_are_one_hold_ending_at_the_answer() -> None:
    shopper = shopper_answering(MOVING, MOVING, PLAIN)
    assert shopper.call("POST", "/billing/invoices").status_code == 201
    assert [seconds for _, seconds in shopper.holds] == [2.0]  # two Retry-After waits
    assert shopper.held == 2  # the 503s it was told


def test_a_cut_connection_after_the_fence_ends_the_fence_s_part(clock: FakeTime) -> None:
    shopper = shopper_answering(MOVING, CUT, PLAIN)
    started = clock.now
    shopper.call("POST", "/billing/invoices")
    assert [seconds for _, seconds in shopper.holds] == [1.0]  # not the backoff after the cut
    assert clock.now - started > 1.0
